# Sourced by scripts/test and scripts/demo: the one set-up both need on a fresh Debian machine.
#   bootstrap       install berth in .venv, start the project's dockerd unless one answers,
#                   point DOCKER_HOST at it, build the images, create the worker users
#   stop_started    stop what bootstrap started (a running engine is left alone); for a trap
BERTH_STARTED_ENGINE=0

bootstrap() {
  scripts/setup
  if ! scripts/engine status >/dev/null 2>&1; then
    BERTH_DEV_LIVE_RESTORE=1 scripts/engine start
    BERTH_STARTED_ENGINE=1
  fi
  eval "$(scripts/engine env)"
  scripts/build-images
  scripts/users
}

stop_started() {
  if [ "$BERTH_STARTED_ENGINE" = 1 ]; then scripts/engine stop || true; fi
}

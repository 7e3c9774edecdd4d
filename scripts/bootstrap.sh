# Sourced by scripts/test and scripts/demo: the one set-up both need on a fresh Debian machine.
#   bootstrap       install berth in .venv, start the project's dockerd unless one answers,
#                   point DOCKER_HOST at it, build the images, create the worker users, and
#                   install what the runc runtime needs (runc_deps)
#   bootstrap_runc  the runc runtime only: no engine; runc, the seccomp profile, the image
#                   directories (scripts/build-images --no-import), the worker users
#   runc_deps       runc and the default seccomp profile it is given (containers-common)
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
  runc_deps
}

runc_deps() {
  local missing=()
  PATH=/usr/local/sbin:/usr/sbin:/sbin:$PATH command -v runc >/dev/null 2>&1 || missing+=(runc)
  [ -f /usr/share/containers/seccomp.json ] || missing+=(golang-github-containers-common)
  if ((${#missing[@]})); then
    echo "bootstrap: installing ${missing[*]} with apt-get (the runc runtime needs them)"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

bootstrap_runc() {
  scripts/setup
  runc_deps
  scripts/build-images --no-import
  scripts/users
}

stop_started() {
  if [ "$BERTH_STARTED_ENGINE" = 1 ]; then scripts/engine stop || true; fi
}

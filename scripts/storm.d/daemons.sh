# scripts/storm: Nimbus and the supervisors as processes, their ZooKeeper chroot and their ports.
# Sourced by scripts/storm.
# shellcheck shell=bash

# ---------------------------------------------------------------- daemons
# Nothing listens on TCP port $1, on any address (/proc/net/tcp*: state 0A is LISTEN; no ss needed).
port_free() {
    local hex
    hex=$(printf '%04X' "$1")
    ! awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

start_daemon() {  # start_daemon nimbus | supervisor-N
    local d=$1 kind=${1%%-*} class="" heap opts=() logdir=$I/logs/$1 p c
    if p=$(daemon_pid "$d"); then return 0; fi
    for c in "${DAEMON_CLASSES[@]}"; do [[ ${c%%:*} == "$kind" ]] && class=${c#*:}; done
    [[ -n $class ]] || die "unknown daemon $d"
    if [[ $kind == supervisor ]]; then
        local n=${d#supervisor-}
        heap=256m
        # what the supervisor's workers must share with it: Storm hands them its storm.options
        opts=("storm.local.dir=$I/$d" "supervisor.thrift.port=$(sup_port "$n")"
              "supervisor.slots.ports=[$(slot_ports "$n" | tr ' ' ,)]")
    else
        heap=512m
    fi
    mkdir -p "$I/run"
    # the JVM's own stdout/stderr (a crash before log4j starts): root's file in root's dir, opened
    # here and inherited (never a file in the storm user's dirs, which root would follow)
    echo "=== $(date -Is) scripts/storm: start $d" >>"$I/run/$d.out"
    # bin/storm.py's java line, without bin/storm.py; its config from the classpath (daemon/<d>/)
    setsid env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/nonexistent JAVA_HOME="$JAVA_HOME" \
        setpriv --reuid="$DAEMON_USER" --regid="$DAEMON_USER" --init-groups -- \
        "$JAVA" -server "-Ddaemon.name=$kind" "-Dstorm.options=$(storm_options "${opts[@]}")" \
        "-Dstorm.home=$H" "-Dstorm.log.dir=$logdir" -Djava.library.path=/usr/local/lib:/opt/local/lib:/usr/lib:/usr/lib64 \
        -Dstorm.conf.file= -cp "$H/*:$H/lib/*:$H/extlib/*:$H/extlib-daemon/*:$I/daemon/$d" \
        "-Xmx$heap" "${JVM_LEAN[@]}" -Djava.deserialization.disabled=true "-Dlogfile.name=$kind.log" \
        "-Dlog4j.configurationFile=$H/log4j2/cluster.xml" "-Dberth.storm.daemon=$NAME/$d" "$class" \
        </dev/null >>"$I/run/$d.out" 2>&1 7>&- 8>&- 9>&- &  # never the instance's lock
    echo $! >"$I/run/$d.pid"
}

log_of() { echo "$I/logs/$1/${1%%-*}.log"; }  # the log of daemon $1

show_tail() {
    local d=$1 n=${2:-30} f
    for f in "$(log_of "$d")" "$I/run/$d.out"; do
        [[ -s $f && -f $f && ! -L $f ]] || continue  # the storm user's file: read it only if plainly one
        echo "----- $d: last $n lines of $f"
        tail -n "$n" "$f"
    done
}

registered() {  # the number of supervisors Nimbus lists, or nothing if Nimbus does not answer
    local out
    out=$(tool "$I/clients/$DAEMON_USER/storm.yaml" cluster 2>/dev/null) || return 1
    grep -o '"id"' <<<"$out" | wc -l
}

wait_ready() {
    local t0=$SECONDS next=0 d n
    while :; do
        for d in $(daemons); do
            # the pid file's process, still on its way through setsid/env/setpriv to java maybe
            if ! pid_alive "$(cat "$I/run/$d.pid" 2>/dev/null)"; then
                show_tail "$d" 40 >&2
                say "$d exited during start-up (logs: $I/logs)"
                return 1
            fi
        done
        n=$(registered) || n=""
        [[ -n $n ]] && ((n >= SUPERVISORS)) && return 0
        if ((SECONDS - t0 >= TIMEOUT)); then
            for d in $(daemons); do show_tail "$d" 20 >&2; done
            say "not ready after ${TIMEOUT}s: ${n:-Nimbus not answering}, $SUPERVISORS supervisor(s) expected"
            return 1
        fi
        if ((SECONDS - t0 >= next)); then
            say "waiting for Nimbus and $SUPERVISORS supervisor(s) (${n:-no answer yet}; $((SECONDS - t0))s/${TIMEOUT}s)"
            next=$((SECONDS - t0 + 10))
        fi
        sleep 1
    done
}

stop_daemon() {  # stop_daemon NAME [SIGNAL]
    local d=$1 sig=${2:-TERM} p t0=$SECONDS
    p=$(daemon_pid "$d") || { rm -f "$I/run/$d.pid"; return 0; }
    kill -"$sig" "$p" 2>/dev/null || true
    while pid_alive "$p"; do
        if ((SECONDS - t0 >= 30)); then kill -KILL "$p" 2>/dev/null || true; fi
        sleep 0.2
    done
    rm -f "$I/run/$d.pid"
}

# Storm's chroot: Storm's identity creates it; where ZooKeeper's top is locked (berth cluster init
# --lock-ensemble), BERTH_STORM_ZK_ADMIN_AUTH (a user:password file of an identity that may create
# there, e.g. the coordinator's) makes $ZK_ROOT once, owned by Storm's identity.
zk_prepare() {
    local out admin=()
    if [[ -n ${BERTH_STORM_ZK_ADMIN_AUTH:-} ]]; then
        [[ -f $BERTH_STORM_ZK_ADMIN_AUTH ]] || die "BERTH_STORM_ZK_ADMIN_AUTH: no file $BERTH_STORM_ZK_ADMIN_AUTH"
        admin=("$BERTH_STORM_ZK_ADMIN_AUTH")
    fi
    local rc=0
    out=$(tool "" zk-prepare "$ZK" "$ZK_AUTH" "$ZK_ROOT/$NAME" "${admin[@]}" 2>&1) || rc=$?
    case $rc in
        0) ;;
        4) die "ZooKeeper ($ZK) does not let Storm's identity ($(cut -d: -f1 "$ZK_AUTH")) create $ZK_ROOT/$NAME: $out
  Where ZooKeeper's top is locked (berth cluster init --lock-ensemble), give an identity that may create
  $ZK_ROOT once: BERTH_STORM_ZK_ADMIN_AUTH=<its user:password file> scripts/storm start (docs/storm.md)" ;;
        *) die "cannot prepare Storm's chroot $ZK_ROOT/$NAME on ZooKeeper ($ZK): $out" ;;
    esac
}

# ---------------------------------------------------------------- ports
port_span() { echo $((20 + $1 * $2)); }  # ports an instance of $1 supervisors with $2 slots each uses

# "LO HI RUNNING" for every other instance that has settings: the ports it uses or will use again.
other_ranges() {
    local f
    for f in "$ROOT"/instances/*/settings; do
        [[ -f $f && $f != "$I/settings" ]] || continue
        (
            # shellcheck disable=SC1090
            . "$f"
            running=0
            for p in "$(dirname "$f")"/run/*.pid; do [[ -f $p ]] && pid_alive "$(<"$p")" && running=1; done
            echo "$BASE $((BASE + $(port_span "$SUPERVISORS" "$SLOTS") - 1)) $running"
        ) 2>/dev/null || true
    done
}

# A base whose ports are free and reserved by no other instance (BERTH_STORM_PORT_BASE=auto), or
# a check of the one given: no running instance uses any of its ports.
choose_base() {
    local want=$1 span lo hi run b p ok
    span=$(port_span "$SUPERVISORS" "$SLOTS")
    local ranges
    ranges=$(other_ranges)
    if [[ $want != auto ]]; then
        while read -r lo hi run; do
            [[ -n $lo ]] || continue
            ((run && want <= hi && want + span - 1 >= lo)) &&
                die "ports $want-$((want + span - 1)) overlap a running instance's ($lo-$hi): pick another BERTH_STORM_PORT_BASE"
        done <<<"$ranges"
        echo "$want"
        return 0
    fi
    for ((b = 20000; b <= 60000; b += 100)); do
        ok=1
        while read -r lo hi run; do
            [[ -n $lo ]] || continue
            if ((b <= hi && b + span - 1 >= lo)); then ok=0; break; fi
        done <<<"$ranges"
        ((ok)) || continue
        for ((p = b; p < b + span; p++)); do port_free "$p" || { ok=0; break; }; done
        ((ok)) && { echo "$b"; return 0; }
    done
    die "no free port range of $span ports between 20000 and 60000"
}

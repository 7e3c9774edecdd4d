# scripts/storm: the commands. Sourced by scripts/storm.
# shellcheck shell=bash

# ---------------------------------------------------------------- commands
running_daemons() { local d; for d in $(daemons); do daemon_pid "$d" >/dev/null && echo "$d"; done; return 0; }

cmd_start() {
    local yaml=${BERTH_STORM_SUPERVISOR_YAML--} extlib=${BERTH_STORM_EXTLIB_DAEMON--} sups=""
    while (($#)); do
        case $1 in
            --supervisors) sups=${2:?--supervisors N}; shift 2 ;;
            --supervisor-yaml) yaml=${2?--supervisor-yaml FILE}; shift 2 ;;
            --extlib-daemon) extlib=${2?--extlib-daemon DIR}; shift 2 ;;
            *) die "start: unknown argument $1" ;;
        esac
    done
    need_root
    local running=""
    if [[ -f $I/settings ]]; then running=$(load_settings && running_daemons | xargs); fi
    if [[ -n $running ]]; then
        load_settings
        [[ $yaml == - && $extlib == - && -z $sups ]] ||
            die "instance $NAME runs ($running): stop it before starting it with other hooks or supervisors"
    else
        load_settings fresh
        [[ -n $sups ]] && SUPERVISORS=$sups
        [[ $SUPERVISORS =~ ^[1-4]$ ]] || die "--supervisors: 1-4, not '$SUPERVISORS'"
        [[ -n $ZK ]] || ZK=$("$REPO/scripts/zookeeper" env | sed -n 's/^export BERTH_ZK=//p')
    fi
    cmd_install
    local d p
    if [[ -z $running ]]; then
        exec 9>"$ROOT/.ports.lock"
        flock 9  # two instances starting at once do not pick the same ports
        BASE=$(choose_base "$BASE")
        local ports n
        ports=$(nimbus_port)
        for ((n = 1; n <= SUPERVISORS; n++)); do ports+=" $(sup_port "$n") $(slot_ports "$n")"; done
        for p in $ports; do
            port_free "$p" || die "port $p is in use: pick another BERTH_STORM_PORT_BASE for instance $NAME"
        done
        save_settings
        exec 9>&-
        take_hooks "$yaml" "$extlib"
        write_config
    fi
    "$REPO/scripts/zookeeper" status >/dev/null 2>&1 || [[ -n ${BERTH_STORM_ZK:-} ]] ||
        die "ZooKeeper is not running: scripts/zookeeper start"
    zk_prepare
    local started=()
    for d in $(daemons); do
        daemon_pid "$d" >/dev/null || started+=("$d")
        start_daemon "$d"
    done
    if ! wait_ready; then  # a failed start leaves nothing of its own running
        for d in "${started[@]}"; do stop_daemon "$d"; done
        die "instance $NAME did not start${started[*]:+; stopped what this start had started (${started[*]})}"
    fi
    say "ready ($NAME, Storm $VERSION, $SECONDS s): Nimbus localhost:$(nimbus_port), $SUPERVISORS supervisor(s); eval \"\$($0 env)\""
}

cmd_stop() {
    need_root
    [[ -f $I/settings ]] || { say "instance $NAME was never started"; return 0; }
    load_settings
    local d p left
    for d in $(daemons | tac); do stop_daemon "$d"; done
    left=$(worker_pids | xargs)
    if [[ -n $left ]]; then
        say "killing leftover worker JVMs of $NAME: $left"
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null || true
        for p in $left; do while pid_alive "$p"; do sleep 0.1; done; done
    fi
    say "stopped $NAME"
}

cmd_status() {
    [[ -f $I/settings ]] || { echo "not running: instance $NAME was never started"; return 1; }
    load_settings
    local d p bad=0 n
    for d in $(daemons); do
        if p=$(daemon_pid "$d"); then echo "$d: pid $p"; else echo "$d: not running"; bad=1; fi
    done
    if n=$(registered); then
        echo "nimbus answers on localhost:$(nimbus_port): $n supervisor(s) registered"
        ((n >= SUPERVISORS)) || bad=1
    else
        echo "nimbus does not answer on localhost:$(nimbus_port)"
        bad=1
    fi
    echo "workers: $(worker_pids | wc -l) JVMs (LogWriters included)"
    return "$bad"
}

cmd_logs() {
    [[ -f $I/settings ]] || die "instance $NAME was never started"
    load_settings
    local d
    for d in ${1:-$(daemons)}; do show_tail "$d" "${2:-40}"; done
}

cmd_env() {
    [[ -f $I/settings ]] || die "instance $NAME was never started (scripts/storm start)"
    load_settings
    local n sconf=() sdirs=() slogs=() sports=() slots=()
    for ((n = 1; n <= SUPERVISORS; n++)); do
        sconf+=("$I/daemon/supervisor-$n/storm.yaml"); sdirs+=("$I/supervisor-$n")
        slogs+=("$I/logs/supervisor-$n"); sports+=("$(sup_port "$n")"); slots+=($(slot_ports "$n"))
    done
    cat <<ENV
export BERTH_STORM_ROOT=$ROOT
export BERTH_STORM_INSTANCE=$NAME
export STORM_VERSION=$VERSION
export STORM_HOME=$H
export STORM_CONF=$H/conf/storm.yaml
export STORM_NIMBUS_CONF=$I/daemon/nimbus/storm.yaml
export STORM_SUPERVISOR_CONFS="${sconf[*]}"
export STORM_SUPERVISOR_LOCAL_DIRS="${sdirs[*]}"
export STORM_SUPERVISOR_LOG_DIRS="${slogs[*]}"
export STORM_LOG_DIR=$I/logs
export STORM_NIMBUS_LOG_DIR=$I/logs/nimbus
export STORM_RUN_DIR=$I/run
export STORM_NIMBUS_PORT=$(nimbus_port)
export STORM_SUPERVISOR_PORTS="${sports[*]}"
export STORM_SLOTS="${slots[*]}"
export STORM_ZK_ROOT=$ZK_ROOT/$NAME
export STORM_AUTH=$AUTH
export STORM_USERS="$DAEMON_USER $USERS"
export STORM_JAR=$TOOL_JAR
export JAVA_HOME=$JAVA_HOME
ENV
}

client_conf() {  # the client storm.yaml of user $1
    local u=$1
    [[ -f $I/clients/$u/storm.yaml ]] || die "user $u is not one of Storm's users here ($DAEMON_USER${AUTH/none/}${AUTH/digest/ $USERS})"
    echo "$I/clients/$u/storm.yaml"
}

cmd_submit() {
    [[ -f $I/settings ]] || die "instance $NAME was never started"
    load_settings
    local as=$DAEMON_USER args=() opts=()
    if [[ ${1:-} == --as ]]; then as=${2:?--as USER}; shift 2; fi
    (($# >= 3)) || die "usage: scripts/storm submit [--as USER] JAR CLASS NAME [ARG...] [-c KEY=VALUE...]"
    local jar=$1 class=$2
    shift 2
    [[ -f $jar ]] || die "no jar $jar"
    while (($#)); do
        if [[ $1 == -c ]]; then
            [[ ${2:-} == *=* ]] || die "-c KEY=VALUE"
            opts+=("$2"); shift 2
        else
            args+=("$1"); shift
        fi
    done
    [[ $AUTH == digest || $as == "$DAEMON_USER" ]] || die "--as $as: BERTH_STORM_AUTH=none has one user, $DAEMON_USER"
    # `storm jar`: the client classpath (lib-worker/, never lib/), the jar, Storm's system properties
    "$JAVA" -client "${JVM_LEAN[@]}" "-Dstorm.options=$(storm_options "${opts[@]}")" "-Dstorm.home=$H" \
        "-Dstorm.conf.file=$(client_conf "$as")" -cp "$H/*:$H/lib-worker/*:$H/extlib/*:$jar" \
        "-Dlog4j.configurationFile=$H/log4j2/client.xml" -Dberth.client.level=info \
        "-Dstorm.jar=$jar" -Dstorm.dependency.jars= '-Dstorm.dependency.artifacts={}' "$class" "${args[@]}"
}

cmd_kill() {
    [[ -f $I/settings ]] || die "instance $NAME was never started"
    load_settings
    local as=$DAEMON_USER wait=0 name=""
    while (($#)); do
        case $1 in
            --as) as=${2:?}; shift 2 ;;
            --wait) wait=${2:?}; shift 2 ;;
            *) name=$1; shift ;;
        esac
    done
    [[ -n $name && $wait =~ ^[0-9]+$ ]] || die "usage: scripts/storm kill NAME [--wait SECONDS] [--as USER]"
    tool "$(client_conf "$as")" kill "$name" "$wait"
}

cmd_client() {  # list | info NAME | acked NAME
    [[ -f $I/settings ]] || die "instance $NAME was never started"
    load_settings
    tool "$(client_conf "$DAEMON_USER")" "$@"
}

cmd_purge() {
    need_root
    [[ -f $I/settings ]] || { say "instance $NAME: nothing to purge"; return 0; }
    cmd_stop
    load_settings
    if [[ -f $TOOL_JAR && -s $ZK_AUTH ]]; then
        tool "" zk-purge "$ZK" "$ZK_AUTH" "$ZK_ROOT/$NAME" || say "could not delete $ZK_ROOT/$NAME in ZooKeeper"
    fi
    rm -rf --one-file-system "$I"
    rm -f "$ROOT/instances/.$NAME.lock"  # held by this command until it exits; nothing is left of the name
    say "purged $NAME"
}

cmd_daemon() {  # start-daemon | stop-daemon | kill-daemon NAME: one daemon (a supervisor restart)
    need_root
    [[ -f $I/settings ]] || die "instance $NAME was never started"
    load_settings
    local d=${2:-}
    daemons | grep -qxF -- "$d" || die "$1: give one of $(daemons | xargs)"
    case $1 in
        start-daemon)
            start_daemon "$d"
            wait_ready || { stop_daemon "$d"; die "$d did not start"; }
            say "$d running: pid $(daemon_pid "$d")"
            ;;
        stop-daemon) stop_daemon "$d"; say "$d stopped" ;;
        kill-daemon) stop_daemon "$d" KILL; say "$d killed" ;;
    esac
}

cmd_zk_prepare() {  # the chroot alone (start does it too)
    need_root
    load_settings fresh
    [[ -n $ZK ]] || ZK=$("$REPO/scripts/zookeeper" env | sed -n 's/^export BERTH_ZK=//p')
    cmd_install
    zk_prepare
    say "ZooKeeper $ZK: $ZK_ROOT/$NAME is Storm's ($(cut -d: -f1 "$ZK_AUTH"))"
}

cmd_pid() {
    [[ -f $I/settings ]] || die "instance $NAME was never started"
    load_settings
    daemons | grep -qxF -- "${1:-}" || die "pid: give one of $(daemons | xargs)"
    daemon_pid "$1"
}

# Sourced by scripts/storm (its header documents the commands, the layout and the environment):
# install, the config files, the daemons and the client commands.
# shellcheck shell=bash

JAVA=$JAVA_HOME/bin/java
DAEMON_CLASSES=(nimbus:org.apache.storm.daemon.nimbus.Nimbus supervisor:org.apache.storm.daemon.supervisor.Supervisor)
# -XX flags: two cores shared by everything on this machine; the C1 compiler alone starts a JVM
# with a fraction of the CPU and the daemons are not where the work is.
JVM_LEAN=(-XX:+UseSerialGC -XX:TieredStopAtLevel=1)

nimbus_port() { echo "$BASE"; }
sup_port() { echo $((BASE + 10 + $1)); }
slot_ports() { local n=$1 j out=(); for ((j = 0; j < SLOTS; j++)); do out+=($((BASE + 20 + (n - 1) * SLOTS + j))); done; echo "${out[*]}"; }
daemons() { local n; echo nimbus; for ((n = 1; n <= SUPERVISORS; n++)); do echo "supervisor-$n"; done; }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (it creates the storm user, chowns dirs, switches user)"; }

pid_alive() {
    [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null || return 1
    local state
    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' /proc/"$1"/status 2>/dev/null)
    [[ $state != Z ]]
}

# The command line of pid $1, one argument a line.
cmdline_of() { { tr '\0' '\n' <"/proc/$1/cmdline"; } 2>/dev/null; }

# pid of daemon $1 (nimbus, supervisor-N) of this instance: its pid file, if that process is a
# JVM of this instance running that daemon.
daemon_pid() {
    local f=$I/run/$1.pid p
    [[ -s $f ]] || return 1
    p=$(<"$f")
    pid_alive "$p" || return 1
    cmdline_of "$p" | grep -qxF -- "-Dberth.storm.daemon=$NAME/$1" || return 1
    echo "$p"
}

# Worker JVMs (and their LogWriters) of this instance: STORM_HOME on their command line.
worker_pids() {
    local p
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        cmdline_of "$p" | grep -qxF -- "-Dstorm.home=$H" || continue
        cmdline_of "$p" | grep -q -- '^-Dberth.storm.daemon=' && continue
        echo "$p"
    done
    return 0
}

urlencode() {
    local s=$1 out="" c i
    for ((i = 0; i < ${#s}; i++)); do
        c=${s:i:1}
        case $c in
            [a-zA-Z0-9._~-]) out+=$c ;;
            *) out+=$(printf '%%%02X' "'$c") ;;
        esac
    done
    printf '%s' "$out"
}

# Storm's -Dstorm.options: each KEY=VALUE url-encoded, joined by commas (as bin/storm.py does).
storm_options() {
    local o out=()
    for o in "$@"; do out+=("$(urlencode "$o")"); done
    local IFS=,
    printf '%s' "${out[*]}"
}

# ---------------------------------------------------------------- install
install_packages() {
    local missing=()
    [[ -x $JAVA ]] || missing+=(openjdk-17-jre-headless)
    command -v mvn >/dev/null 2>&1 || missing+=(maven)
    command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
    ((${#missing[@]})) || return 0
    say "installing ${missing[*]} with apt-get (not found on this machine)…"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    [[ -x $JAVA ]] || die "$JAVA still missing (BERTH_STORM_JAVA_HOME names a JDK 17 home)"
}

ensure_user() {
    getent group "$DAEMON_USER" >/dev/null || groupadd --system "$DAEMON_USER"
    getent passwd "$DAEMON_USER" >/dev/null ||
        useradd --system --gid "$DAEMON_USER" --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$DAEMON_USER"
}

mvn_quiet() {
    local log=$ROOT/maven.log
    if ! mvn -B -q "$@" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "Maven failed (mvn $*; log $log)"
    fi
}

# Storm's jars, one Maven run, cached in $DIST (a stamp marks a complete copy).
install_dist() {
    [[ -f $DIST/stamp ]] && return 0
    say "fetching Apache Storm $VERSION's jars from Maven Central (once; cached in $DIST)…"
    local t0=$SECONDS tmp=$DIST.tmp
    rm -rf "$tmp"
    mvn_quiet -f "$REPO/storm/pom.xml" -pl home/lib,home/lib-worker package "-Dberth.storm.dist=$tmp"
    [[ -f $tmp/lib/storm-server-$VERSION.jar && -f $tmp/lib-worker/storm-client-$VERSION.jar ]] ||
        die "Maven left no storm-server/storm-client $VERSION jars in $tmp"
    [[ ! -e $tmp/lib-worker/storm-server-$VERSION.jar ]] || die "storm-server leaked into lib-worker/"
    chmod -R a+rX,go-w "$tmp"
    rm -rf "$DIST"
    mv "$tmp" "$DIST"
    echo "$VERSION $(date -Is)" >"$DIST/stamp"
    say "Storm $VERSION: lib/ $(ls "$DIST/lib" | wc -l) jars, lib-worker/ $(ls "$DIST/lib-worker" | wc -l) jars, $(du -sh "$DIST" | cut -f1) ($((SECONDS - t0)) s)"
}

# The topologies' jar, keyed by a hash of its sources: worktrees with different sources do not
# overwrite each other's jar.
topologies_hash() {
    (cd "$REPO/storm" && find pom.xml topologies/pom.xml topologies/src -type f -print0 | sort -z |
        xargs -0 sha256sum | sha256sum | cut -c1-16)
}

install_jar() {
    [[ -f $TOOL_JAR ]] && return 0
    say "building the test topologies (storm/topologies, cached in $(dirname "$TOOL_JAR"))…"
    mvn_quiet -f "$REPO/storm/topologies/pom.xml" package
    mkdir -p "$(dirname "$TOOL_JAR")"
    install -m 0644 "$REPO/storm/topologies/target/berth-storm-topologies.jar" "$TOOL_JAR.tmp"
    mv -f "$TOOL_JAR.tmp" "$TOOL_JAR"
}

cmd_install() {
    need_root
    install_packages
    ensure_user
    mkdir -p "$ROOT/dist" "$JARS"
    chmod 0755 "$ROOT" "$ROOT/dist" "$JARS"
    exec 8>"$ROOT/.install.lock"
    flock 8  # two starts at once: one Maven run, one ZooKeeper identity
    install_dist
    install_jar
    if [[ ! -s $ZK_AUTH ]]; then
        (umask 077; printf 'berth-storm:%s\n' "$(head -c 18 /dev/urandom | base64 | tr '+/' 'xy')" >"$ZK_AUTH.tmp")
        mv -f "$ZK_AUTH.tmp" "$ZK_AUTH"
    fi
    exec 8>&-
}

# The topologies' jar of these sources, built if they changed since (and Storm's jars, the first time).
ensure_jar() {
    [[ -f $TOOL_JAR && -f $DIST/stamp ]] && return 0
    need_root
    mkdir -p "$ROOT"
    exec 8>"$ROOT/.install.lock"
    flock 8
    install_dist
    install_jar
    exec 8>&-
}

tool() {  # the client tool, on the workers' classpath: tool CLIENT_CONF ARGS...
    local conf=$1; shift
    ensure_jar
    "$JAVA" -client "${JVM_LEAN[@]}" -Xshare:auto -Dstorm.conf.file="$conf" -Dstorm.options= \
        "-Dlog4j.configurationFile=$REPO/storm/home/log4j2/client.xml" -Dberth.client.level=error \
        -cp "$DIST/lib-worker/*:$TOOL_JAR" dev.berth.storm.Tool "$@"
}

# ---------------------------------------------------------------- config
# storm.zookeeper.servers and .port from a host:port list. Storm joins each server with the one
# port (CuratorUtils.newCurator: server + ":" + port, joined by commas, then the chroot); an
# ensemble on one host with a port per server is reached by giving all but the last port inside
# the first entry: ["h:p1,h:p2,h"] and port p3 make the connect string "h:p1,h:p2,h:p3".
zk_yaml() {
    local hosts=() ports=() hp
    IFS=, read -ra hps <<<"$ZK"
    for hp in "${hps[@]}"; do
        [[ $hp =~ ^([A-Za-z0-9.-]+):([0-9]+)$ ]] || die "ZooKeeper address '$hp' is not host:port"
        hosts+=("${BASH_REMATCH[1]}")
        ports+=("${BASH_REMATCH[2]}")
    done
    ((${#hosts[@]})) || die "no ZooKeeper address"
    local last=$((${#hosts[@]} - 1)) same=1 i
    for i in "${!ports[@]}"; do [[ ${ports[i]} == "${ports[0]}" ]] || same=0; done
    if ((same)); then
        printf 'storm.zookeeper.servers:\n'
        printf '  - "%s"\n' "${hosts[@]}"
    else
        local first=""
        for ((i = 0; i < last; i++)); do first+="${hosts[i]}:${ports[i]},"; done
        printf 'storm.zookeeper.servers:\n  - "%s%s"\n' "$first" "${hosts[last]}"
    fi
    printf 'storm.zookeeper.port: %s\n' "${ports[last]}"
    printf 'storm.zookeeper.root: "%s/%s"\n' "$ZK_ROOT" "$NAME"
}

# What workers and clients read (STORM_HOME/conf/storm.yaml): no secret in it.
common_yaml() {
    zk_yaml
    cat <<YAML
nimbus.seeds:
  - "localhost"
nimbus.thrift.port: $(nimbus_port)
ui.port: $((BASE + 1))
logviewer.port: $((BASE + 2))
storm.local.hostname: "localhost"
# a worker writes its executors' stats (acked counts) to ZooKeeper this often (Storm: 60 s)
executor.metrics.frequency.secs: 5
YAML
    if [[ $AUTH == digest ]]; then
        echo 'storm.thrift.transport: "org.apache.storm.security.auth.digest.DigestSaslTransportPlugin"'
    fi
}

# What only the daemons read (root:storm 0640): ZooKeeper's identity, the Thrift users.
daemon_yaml() {
    local local_dir=$1 auth
    auth=$(<"$ZK_AUTH")
    [[ -n ${ZK_DIGEST:-} ]] || ZK_DIGEST=$(tool "" zk-digest "$ZK_AUTH") || die "cannot read $ZK_AUTH"
    common_yaml
    cat <<YAML
storm.local.dir: "$local_dir"
storm.zookeeper.auth.scheme: "digest"
storm.zookeeper.auth.payload: "$auth"
storm.zookeeper.superACL: "digest:$ZK_DIGEST"
YAML
    if [[ $AUTH == digest ]]; then echo "java.security.auth.login.config: \"$I/daemon/jaas.conf\""; fi
}

supervisor_yaml() {
    local n=$1
    daemon_yaml "$I/supervisor-$n"
    echo "supervisor.thrift.port: $(sup_port "$n")"
    echo "supervisor.slots.ports:"
    printf '  - %s\n' $(slot_ports "$n")
    # Storm's worker.childopts (defaults.yaml) plus the lean JVM flags
    echo 'worker.childopts: "-Xmx%HEAP-MEM%m -XX:+IgnoreUnrecognizedVMOptions -Xloggc:artifacts/gc.log -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath=artifacts/heapdump '"${JVM_LEAN[*]}"'"'
}

password() { head -c 15 /dev/urandom | base64 | tr '+/' 'xy'; }

# The JAAS logins of SASL DIGEST-MD5 (kept across starts: a restarted Nimbus knows the same users).
write_jaas() {
    local u pw server="" client_pw
    mkdir -p "$I/clients"
    chmod 0700 "$I/clients"
    for u in "$DAEMON_USER" $USERS; do
        mkdir -p "$I/clients/$u"
        if [[ ! -s $I/clients/$u/password ]]; then (umask 077; password >"$I/clients/$u/password"); fi
        pw=$(<"$I/clients/$u/password")
        server+="   user_$u=\"$pw\""$'\n'
        (umask 077; printf 'StormClient {\n   org.apache.zookeeper.server.auth.DigestLoginModule required\n   username="%s"\n   password="%s";\n};\n' \
            "$u" "$pw" >"$I/clients/$u/jaas.conf")
        { common_yaml; echo "java.security.auth.login.config: \"$I/clients/$u/jaas.conf\""; } >"$I/clients/$u/storm.yaml"
    done
    client_pw=$(<"$I/clients/$DAEMON_USER/password")
    {
        printf 'StormServer {\n   org.apache.zookeeper.server.auth.DigestLoginModule required\n%s};\n' "${server%$'\n'};"$'\n'
        printf 'StormClient {\n   org.apache.zookeeper.server.auth.DigestLoginModule required\n   username="%s"\n   password="%s";\n};\n' \
            "$DAEMON_USER" "$client_pw"
    } >"$I/daemon/jaas.conf"
}

# Hooks: saved copies in $I/hooks, replaced when given, removed when given empty.
take_hooks() {
    local yaml=$1 extlib=$2
    mkdir -p "$I/hooks"
    if [[ $yaml == "" ]]; then
        rm -f "$I/hooks/supervisor.yaml"
    elif [[ $yaml != - ]]; then
        [[ -f $yaml ]] || die "--supervisor-yaml: no file $yaml"
        (($(stat -c %s "$yaml") <= 1048576)) || die "--supervisor-yaml: $yaml is over 1 MiB"
        cp -- "$yaml" "$I/hooks/.supervisor.yaml"
        # a file that is no mapping of keys is refused now (the saved one stays), not at every later start
        if ! tool "" merge-yaml "$I/hooks/.check.yaml" "$I/hooks/.supervisor.yaml" >/dev/null; then
            rm -f "$I/hooks/.supervisor.yaml" "$I/hooks/.check.yaml"
            die "--supervisor-yaml: $yaml is not a YAML mapping of storm.yaml keys"
        fi
        rm -f "$I/hooks/.check.yaml"
        mv -f "$I/hooks/.supervisor.yaml" "$I/hooks/supervisor.yaml"
    fi
    if [[ $extlib != - ]]; then
        rm -rf "$I/hooks/extlib-daemon"
        if [[ -n $extlib ]]; then
            [[ -d $extlib ]] || die "--extlib-daemon: no directory $extlib"
            local n=0 bytes=0 j
            for j in "$extlib"/*.jar; do
                [[ -f $j ]] || continue
                n=$((n + 1))
                bytes=$((bytes + $(stat -Lc %s "$j")))
            done
            ((n)) || die "--extlib-daemon: no *.jar in $extlib"
            ((n <= 64 && bytes <= 512 * 1048576)) ||
                die "--extlib-daemon: $n jars, $((bytes / 1048576)) MiB in $extlib (at most 64 jars, 512 MiB)"
            mkdir -p "$I/hooks/extlib-daemon"
            cp -L -- "$extlib"/*.jar "$I/hooks/extlib-daemon/"
        fi
    fi
}

# STORM_HOME: hard links to the cached jars (no copy), berth's log4j2 configs, the workers' conf.
make_home() {
    local d
    mkdir -p "$H"
    chmod 0755 "$ROOT/instances" "$I" "$H"
    for d in lib lib-worker; do
        if [[ ! -f $H/$d/.stamp ]] || ! cmp -s "$H/$d/.stamp" "$DIST/stamp"; then
            rm -rf "$H/$d"
            cp -al "$DIST/$d" "$H/$d" 2>/dev/null || cp -a "$DIST/$d" "$H/$d"
            cp "$DIST/stamp" "$H/$d/.stamp"
        fi
    done
    mkdir -p "$H/extlib" "$H/conf" "$H/log4j2"
    rm -rf "$H/extlib-daemon"
    mkdir -p "$H/extlib-daemon"
    if [[ -d $I/hooks/extlib-daemon ]]; then cp "$I/hooks/extlib-daemon"/*.jar "$H/extlib-daemon/"; fi
    install -m 0644 "$REPO/storm/home/log4j2/"{cluster,worker,client}.xml "$H/log4j2/"
    { echo "# written by scripts/storm: Storm instance $NAME, for its workers and clients (no secret here)"; common_yaml; } \
        >"$H/conf/storm.yaml"
    echo "$VERSION" >"$H/RELEASE"
    chmod -R a+rX,go-w "$H"
}

# A dir of the storm user's, directly in a root-owned one (so the storm user, and a worker running
# as it, cannot swap it for a link to where root's chown would land).
storm_dir() {
    local d=$1 mode=$2
    [[ ! -L $d ]] || die "$d is a symbolic link: refusing to chown it (purge the instance)"
    [[ $(stat -c %u "$(dirname "$d")") == 0 ]] || die "$(dirname "$d") is not root's"
    mkdir -p "$d"
    chown -h "$DAEMON_USER:$DAEMON_USER" "$d"
    chmod "$mode" "$d"
}

write_config() {
    local n
    make_home
    mkdir -p "$I/daemon" "$I/run" "$I/logs"
    chown "root:$DAEMON_USER" "$I/daemon"
    chmod 0750 "$I/daemon"
    chmod 0755 "$I/run" "$I/logs"
    storm_dir "$I/nimbus" 0700
    storm_dir "$I/logs/nimbus" 0755
    if [[ $AUTH == digest ]]; then write_jaas; else mkdir -p "$I/clients/$DAEMON_USER"; { common_yaml; } >"$I/clients/$DAEMON_USER/storm.yaml"; fi
    mkdir -p "$I/daemon/nimbus"
    {
        echo "# written by scripts/storm: Nimbus of instance $NAME"
        daemon_yaml "$I/nimbus"
        echo "storm.metricstore.rocksdb.location: \"$I/nimbus/storm_rocks\""
    } >"$I/daemon/nimbus/storm.yaml"
    for ((n = 1; n <= SUPERVISORS; n++)); do
        mkdir -p "$I/daemon/supervisor-$n"
        storm_dir "$I/supervisor-$n" 0755
        storm_dir "$I/logs/supervisor-$n" 0755
        supervisor_yaml "$n" >"$I/daemon/supervisor-$n/base.yaml"
        local extra=()
        [[ -f $I/hooks/supervisor.yaml ]] && extra=("$I/hooks/supervisor.yaml")
        tool "" merge-yaml "$I/daemon/supervisor-$n/storm.yaml" "$I/daemon/supervisor-$n/base.yaml" "${extra[@]}" ||
            die "cannot merge the supervisor's storm.yaml with $I/hooks/supervisor.yaml (given as --supervisor-yaml)"
    done
    chown -R "root:$DAEMON_USER" "$I/daemon"
    find "$I/daemon" -type f -exec chmod 0640 {} +
    find "$I/daemon" -mindepth 1 -type d -exec chmod 0750 {} +
}

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

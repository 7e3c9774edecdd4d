# scripts/storm: the helpers every part uses, and install (Storm's jars, the topologies' jar, the
# storm user, the ZooKeeper identity). Sourced by scripts/storm (its header documents it all).
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

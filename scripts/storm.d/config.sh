# scripts/storm: the config files of an instance (STORM_HOME, each daemon's storm.yaml, the JAAS
# logins, the hooks). Sourced by scripts/storm.
# shellcheck shell=bash

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

package dev.berth.storm;

import java.io.File;
import java.io.IOException;
import java.io.Reader;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.apache.storm.Config;
import org.apache.storm.generated.ClusterSummary;
import org.apache.storm.generated.ExecutorSpecificStats;
import org.apache.storm.generated.ExecutorSummary;
import org.apache.storm.generated.KillOptions;
import org.apache.storm.generated.NotAliveException;
import org.apache.storm.generated.SupervisorSummary;
import org.apache.storm.generated.TopologyInfo;
import org.apache.storm.generated.TopologySummary;
import org.apache.storm.shade.net.minidev.json.JSONValue;
import org.apache.storm.shade.org.apache.zookeeper.CreateMode;
import org.apache.storm.shade.org.apache.zookeeper.KeeperException;
import org.apache.storm.shade.org.apache.zookeeper.Watcher;
import org.apache.storm.shade.org.apache.zookeeper.ZKUtil;
import org.apache.storm.shade.org.apache.zookeeper.ZooDefs;
import org.apache.storm.shade.org.apache.zookeeper.ZooKeeper;
import org.apache.storm.shade.org.apache.zookeeper.data.ACL;
import org.apache.storm.shade.org.apache.zookeeper.data.Id;
import org.apache.storm.shade.org.apache.zookeeper.server.auth.DigestAuthenticationProvider;
import org.apache.storm.shade.org.yaml.snakeyaml.DumperOptions;
import org.apache.storm.shade.org.yaml.snakeyaml.LoaderOptions;
import org.apache.storm.shade.org.yaml.snakeyaml.Yaml;
import org.apache.storm.shade.org.yaml.snakeyaml.constructor.SafeConstructor;
import org.apache.storm.utils.NimbusClient;
import org.apache.storm.utils.NimbusLeaderNotFoundException;
import org.apache.storm.utils.Utils;

/**
 * berth's small Storm client, run by scripts/storm on the worker classpath (lib-worker/) with a
 * client storm.yaml, so that no Storm daemon jar (lib/) is needed to talk to a cluster and no UI
 * (storm-webapp is not on Maven Central) to read its acked counts.
 *
 * <pre>
 *   cluster                   the supervisors Nimbus knows, as JSON (id, host, slots, used)
 *   list                      topologies as a JSON list (name, id, owner, status, workers, uptime_secs)
 *   info NAME                 one topology as JSON, with its workers and the spouts' acked count
 *   acked NAME                the spouts' acked tuples since the topology started (a number)
 *   kill NAME [WAIT_SECS]     kill it (Storm waits WAIT_SECS, default 0, before removing it)
 *   merge-yaml OUT BASE [EXTRA...]   OUT = BASE with every top-level key of each EXTRA set over it
 *   zk-prepare HOSTS AUTH PATH [ADMIN_AUTH]
 *                             make PATH (and parents) exist, as the digest identity in AUTH; a
 *                             parent it may not create (a locked top) is made by ADMIN_AUTH's
 *                             identity, giving AUTH's all rights on it
 *   zk-purge HOSTS AUTH PATH         delete PATH and everything under it
 *   zk-digest AUTH                   the digest ACL id of AUTH's identity (user:base64(sha1))
 * </pre>
 *
 * <p>Exit status: 0 done, 2 usage, 3 no such topology, 4 ZooKeeper refused this identity, 5 ZooKeeper
 * or a file could not be reached or read (a message says which), 6 Nimbus does not answer, 1 anything
 * else.
 */
public final class Tool {
    private static final long MAX_YAML_BYTES = 1 << 20;
    private static final String ALL_TIME = ":all-time";

    private Tool() {
    }

    public static void main(String[] args) throws Exception {
        int code;
        try {
            code = run(args);
        } catch (NimbusLeaderNotFoundException e) {
            System.err.println("Nimbus does not answer: " + e.getMessage());
            code = 6;
        } catch (NotAliveException e) {
            System.err.println("no such topology: " + e.get_msg());
            code = 3;
        } catch (UsageException e) {
            System.err.println(e.getMessage());
            code = 2;
        } catch (KeeperException.NoAuthException e) {
            System.err.println("ZooKeeper refused: " + e.getMessage());
            code = 4;
        } catch (KeeperException | IOException e) {
            System.err.println(e.getClass().getSimpleName() + ": " + e.getMessage());
            code = 5;
        }
        System.exit(code);
    }

    private static int run(String[] a) throws Exception {
        String cmd = a.length > 0 ? a[0] : "";
        switch (cmd) {
            case "cluster":
                need(a, 1, 1, "cluster");
                return withNimbus(c -> print(supervisors(c.getClient().getClusterInfo())));
            case "list":
                need(a, 1, 1, "list");
                return withNimbus(c -> print(list(c.getClient().getClusterInfo())));
            case "info":
                need(a, 2, 2, "info NAME");
                return withNimbus(c -> print(info(c.getClient().getTopologyInfoByName(a[1]))));
            case "acked":
                need(a, 2, 2, "acked NAME");
                return withNimbus(c -> System.out.println(acked(c.getClient().getTopologyInfoByName(a[1]))));
            case "kill":
                need(a, 2, 3, "kill NAME [WAIT_SECS]");
                KillOptions opts = new KillOptions();
                opts.set_wait_secs(a.length > 2 ? Integer.parseInt(a[2]) : 0);
                return withNimbus(c -> c.getClient().killTopologyWithOpts(a[1], opts));
            case "merge-yaml":
                need(a, 3, 64, "merge-yaml OUT BASE [EXTRA...]");
                mergeYaml(a);
                return 0;
            case "zk-digest":
                need(a, 2, 2, "zk-digest AUTH_FILE");
                System.out.println(DigestAuthenticationProvider.generateDigest(readAuth(a[1])));
                return 0;
            case "zk-prepare":
            case "zk-purge":
                need(a, 4, cmd.equals("zk-prepare") ? 5 : 4, cmd + " HOSTS AUTH_FILE PATH [ADMIN_AUTH_FILE]");
                zk(cmd, a[1], a[2], a[3], a.length > 4 ? a[4] : null);
                return 0;
            default:
                throw new UsageException("usage: Tool cluster|list|info|acked|kill|merge-yaml|zk-prepare|zk-purge|zk-digest ...");
        }
    }

    private interface WithClient {
        void run(NimbusClient client) throws Exception;
    }

    private static int withNimbus(WithClient body) throws Exception {
        Map<String, Object> conf = Utils.readStormConfig();
        // one quick try: callers poll (scripts/storm start waits for Nimbus), Storm's client would
        // retry five times with a growing backoff first
        conf.put(Config.STORM_NIMBUS_RETRY_TIMES, 1);
        conf.put(Config.STORM_NIMBUS_RETRY_INTERVAL, 500);
        try (NimbusClient client = NimbusClient.getConfiguredClient(conf, 30_000)) {
            body.run(client);
        }
        return 0;
    }

    private static List<Object> supervisors(ClusterSummary cluster) {
        List<Object> out = new ArrayList<>();
        for (SupervisorSummary s : cluster.get_supervisors()) {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("id", s.get_supervisor_id());
            m.put("host", s.get_host());
            m.put("slots", s.get_num_workers());
            m.put("used", s.get_num_used_workers());
            m.put("uptime_secs", s.get_uptime_secs());
            out.add(m);
        }
        return out;
    }

    private static List<Object> list(ClusterSummary cluster) {
        List<Object> out = new ArrayList<>();
        for (TopologySummary t : cluster.get_topologies()) {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("name", t.get_name());
            m.put("id", t.get_id());
            m.put("owner", t.get_owner());
            m.put("status", t.get_status());
            m.put("workers", t.get_num_workers());
            m.put("uptime_secs", t.get_uptime_secs());
            out.add(m);
        }
        return out;
    }

    private static Map<String, Object> info(TopologyInfo t) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("name", t.get_name());
        m.put("id", t.get_id());
        m.put("owner", t.get_owner());
        m.put("status", t.get_status());
        m.put("uptime_secs", t.get_uptime_secs());
        Map<String, TreeSet<String>> workers = new TreeMap<>();
        for (ExecutorSummary e : t.get_executors()) {
            workers.computeIfAbsent(e.get_host() + ":" + e.get_port(), k -> new TreeSet<>()).add(e.get_component_id());
        }
        List<Object> ws = new ArrayList<>();
        for (Map.Entry<String, TreeSet<String>> w : workers.entrySet()) {
            Map<String, Object> wm = new LinkedHashMap<>();
            int colon = w.getKey().lastIndexOf(':');
            wm.put("host", w.getKey().substring(0, colon));
            wm.put("port", Integer.parseInt(w.getKey().substring(colon + 1)));
            wm.put("components", new ArrayList<>(w.getValue()));
            ws.add(wm);
        }
        m.put("workers", ws);
        m.put("acked", acked(t));
        return m;
    }

    /** The spouts' acked tuples over Storm's all-time window (each spout executor's, summed). */
    private static long acked(TopologyInfo t) {
        long sum = 0;
        for (ExecutorSummary e : t.get_executors()) {
            if (e.get_stats() == null) {
                continue;  // an executor that has not reported yet
            }
            ExecutorSpecificStats s = e.get_stats().get_specific();
            if (s == null || !s.is_set_spout()) {
                continue;
            }
            Map<String, Long> byStream = s.get_spout().get_acked().get(ALL_TIME);
            if (byStream != null) {
                for (Long n : byStream.values()) {
                    sum += n;
                }
            }
        }
        return sum;
    }

    private static void print(Object o) {
        System.out.println(JSONValue.toJSONString(o));
    }

    /** Storm reads one storm.yaml; berth's hooks add keys to it (a plugin's lines), so the file a
     * supervisor reads is written whole here, each key once, and a bad extra file is refused. */
    @SuppressWarnings("unchecked")
    private static void mergeYaml(String[] a) throws IOException {
        Map<String, Object> out = new LinkedHashMap<>();
        for (int i = 2; i < a.length; i++) {
            Path p = Paths.get(a[i]);
            if (Files.size(p) > MAX_YAML_BYTES) {
                throw new UsageException(p + ": over " + MAX_YAML_BYTES + " bytes");
            }
            Object doc;
            try (Reader r = Files.newBufferedReader(p, StandardCharsets.UTF_8)) {
                doc = new Yaml(new SafeConstructor(new LoaderOptions())).load(r);
            } catch (RuntimeException e) {
                throw new UsageException(p + ": not YAML: " + e.getMessage());
            }
            if (doc == null) {
                continue;
            }
            if (!(doc instanceof Map)) {
                throw new UsageException(p + ": not a mapping of storm.yaml keys");
            }
            for (Map.Entry<Object, Object> e : ((Map<Object, Object>) doc).entrySet()) {
                if (!(e.getKey() instanceof String)) {
                    throw new UsageException(p + ": key " + e.getKey() + " is not a string");
                }
                if (i > 2 && out.containsKey(e.getKey())) {
                    System.err.println("merge-yaml: " + p + " sets " + e.getKey() + " over the base");
                }
                out.put((String) e.getKey(), e.getValue());
            }
        }
        DumperOptions opts = new DumperOptions();
        opts.setDefaultFlowStyle(DumperOptions.FlowStyle.BLOCK);
        Path target = Paths.get(a[1]);
        Path tmp = Paths.get(a[1] + ".tmp");
        try (Writer w = Files.newBufferedWriter(tmp, StandardCharsets.UTF_8)) {
            w.write("# written by scripts/storm (merged: " + String.join(", ", List.of(a).subList(2, a.length)) + ")\n");
            new Yaml(opts).dump(out, w);
        }
        Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
    }

    private static ZooKeeper login(String hosts, String auth) throws Exception {
        CountDownLatch connected = new CountDownLatch(1);
        ZooKeeper zk = new ZooKeeper(hosts, 15_000, ev -> {
            if (ev.getState() == Watcher.Event.KeeperState.SyncConnected) {
                connected.countDown();
            }
        });
        zk.addAuthInfo("digest", auth.getBytes(StandardCharsets.UTF_8));
        if (!connected.await(30, TimeUnit.SECONDS)) {
            zk.close();
            throw new IOException("no ZooKeeper server of " + hosts + " answered in 30 s");
        }
        return zk;
    }

    private static String readAuth(String file) throws IOException {
        String auth = new String(Files.readAllBytes(new File(file).toPath()), StandardCharsets.UTF_8).trim();
        if (!auth.matches("[^:\\s]+:\\S+")) {
            throw new UsageException(file + ": not one line user:password");
        }
        return auth;
    }

    private static void zk(String cmd, String hosts, String authFile, String path, String adminFile) throws Exception {
        String auth = readAuth(authFile);
        ZooKeeper zk = login(hosts, auth);
        try {
            if (cmd.equals("zk-purge")) {
                if (zk.exists(path, false) != null) {
                    ZKUtil.deleteRecursive(zk, path);
                }
                return;
            }
            StringBuilder sofar = new StringBuilder();
            for (String part : path.substring(1).split("/")) {
                sofar.append('/').append(part);
                if (zk.exists(sofar.toString(), false) != null) {
                    continue;
                }
                try {
                    zk.create(sofar.toString(), new byte[0], ZooDefs.Ids.CREATOR_ALL_ACL, CreateMode.PERSISTENT);
                } catch (KeeperException.NodeExistsException e) {
                    // made meanwhile by another instance: as good
                } catch (KeeperException.NoAuthException e) {
                    if (adminFile == null) {
                        throw e;
                    }
                    createAsAdmin(hosts, readAuth(adminFile), sofar.toString(), auth);
                }
            }
            // Storm creates its znodes under PATH as this identity: prove it may.
            String probe = zk.create(path + "/berth-probe-", new byte[0], ZooDefs.Ids.CREATOR_ALL_ACL,
                                     CreateMode.EPHEMERAL_SEQUENTIAL);
            zk.delete(probe, -1);
        } finally {
            zk.close();
        }
    }

    /** Where ZooKeeper's top is locked to an administrator: that identity makes the node, owned by
     * Storm's (all rights), readable by everyone, as an open top would have let Storm make it. */
    private static void createAsAdmin(String hosts, String admin, String node, String auth) throws Exception {
        ZooKeeper zk = login(hosts, admin);
        try {
            List<ACL> acl = new ArrayList<>();
            acl.add(new ACL(ZooDefs.Perms.ALL, new Id("digest", DigestAuthenticationProvider.generateDigest(auth))));
            acl.add(new ACL(ZooDefs.Perms.READ, ZooDefs.Ids.ANYONE_ID_UNSAFE));
            zk.create(node, new byte[0], acl, CreateMode.PERSISTENT);
        } catch (KeeperException.NodeExistsException e) {
            // made meanwhile
        } finally {
            zk.close();
        }
    }

    private static void need(String[] a, int min, int max, String usage) {
        if (a.length < min || a.length > max) {
            throw new UsageException("usage: Tool " + usage);
        }
    }

    private static final class UsageException extends RuntimeException {
        UsageException(String msg) {
            super(msg);
        }
    }
}

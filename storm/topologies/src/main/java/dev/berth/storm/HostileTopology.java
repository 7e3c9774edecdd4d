package dev.berth.storm;

import java.io.File;
import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.apache.storm.Config;
import org.apache.storm.StormSubmitter;
import org.apache.storm.shade.org.apache.curator.framework.CuratorFramework;
import org.apache.storm.shade.net.minidev.json.JSONValue;
import org.apache.storm.spout.SpoutOutputCollector;
import org.apache.storm.task.TopologyContext;
import org.apache.storm.topology.OutputFieldsDeclarer;
import org.apache.storm.topology.TopologyBuilder;
import org.apache.storm.topology.base.BaseRichSpout;
import org.apache.storm.tuple.Fields;
import org.apache.storm.utils.CuratorUtils;
import org.apache.storm.utils.ZookeeperAuthInfo;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A tenant's worker that tries what isolation must refuse, and reports what it found, so that a
 * test can assert each attempt failed under berth (and see that it succeeds under Storm's default
 * isolation, where every worker runs as the supervisor's user).
 *
 * <p>Usage: {@code HostileTopology NAME}; settings through {@code -c key=value}:
 * {@value #SOCKET} (a unix socket to connect to: berth's API), {@value #READ} and
 * {@value #WRITE} (comma-separated extra paths to read / directories to create a file in),
 * {@value #PIDS} (comma-separated pids to signal besides every pid it can see),
 * {@value #SIGNAL} (the signal number sent, default 0: only "could I?").
 *
 * <p>Probed by default: every other worker's dir under {@code storm.local.dir/workers} (list,
 * read its files, create a file), every other topology's {@code supervisor/stormdist} dir (the
 * same), {@code supervisor/localstate} (list and read), processes it can see in /proc (up to 64
 * not root's), and Storm's own leak: the cluster's ZooKeeper payload in its topology conf
 * ({@code secret in own conf}) and, with it, other topologies' worker-token keys in ZooKeeper
 * ({@code zookeeper read}). Those two are Storm's, not a container's: isolation cannot refuse
 * them (docs/storm.md).
 *
 * <p>Each attempt is one JSON object {@code {"probe", "target", "ok", "detail"}} ({@code ok}
 * true: the attempt succeeded, which isolation should prevent), logged as
 * {@code BERTH-HOSTILE <json>} in the worker.log and written, all together, as a JSON list to
 * {@code hostile-report.json} in the worker's artifacts dir once every probe ran.
 */
public final class HostileTopology {
    public static final String SOCKET = "berth.hostile.socket";
    public static final String READ = "berth.hostile.read";
    public static final String WRITE = "berth.hostile.write";
    public static final String PIDS = "berth.hostile.pids";
    public static final String SIGNAL = "berth.hostile.signal";
    public static final String REPORT = "hostile-report.json";

    private HostileTopology() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: HostileTopology NAME");
            System.exit(2);
        }
        TopologyBuilder builder = new TopologyBuilder();
        builder.setSpout("probe", new ProbeSpout(), 1);
        Config conf = new Config();
        conf.setNumWorkers(1);
        StormSubmitter.submitTopology(args[0], conf, builder.createTopology());
    }

    /** Runs every probe once, when it opens, then idles. */
    public static final class ProbeSpout extends BaseRichSpout {
        private static final Logger LOG = LoggerFactory.getLogger(ProbeSpout.class);
        private static final int MAX_ENTRIES = 64;  // per directory: the report stays small
        private final List<Map<String, Object>> report = new ArrayList<>();

        @Override
        public void open(Map<String, Object> conf, TopologyContext context, SpoutOutputCollector collector) {
            // the supervisor's storm.local.dir (the worker's command line has it): the topology
            // conf holds Nimbus's, which Nimbus copies into every topology's conf with the rest of
            // its own config
            String local = System.getProperty("storm.local.dir", String.valueOf(conf.get(Config.STORM_LOCAL_DIR)));
            String me = System.getProperty("worker.id", "");
            String topo = context.getStormId();
            probeSocket(str(conf.get(SOCKET)));
            for (File w : list(new File(local, "workers"))) {
                if (!w.getName().equals(me)) {
                    probeDir(w);
                }
            }
            for (File t : list(new File(local, "supervisor/stormdist"))) {
                if (!t.getName().equals(topo)) {
                    probeDir(t);
                }
            }
            Path localstate = Paths.get(local, "supervisor", "localstate");
            record("list", localstate.toString(), () -> String.valueOf(names(localstate.toFile())));
            for (File f : list(localstate.toFile())) {
                probeRead(f.toPath());
            }
            for (String p : split(conf.get(READ))) {
                probeRead(Paths.get(p));
            }
            for (String d : split(conf.get(WRITE))) {
                probeWrite(Paths.get(d));
            }
            probeSignals(conf);
            probeClusterSecret(conf, topo);
            writeReport();
        }

        /**
         * Storm 2.8's Nimbus saves its own config into each topology's conf (Nimbus.java 3321-3322:
         * with no supervisor.worker.version.classpath.map, getConfigFromClasspath returns Nimbus's
         * conf), so a worker finds the cluster's ZooKeeper payload in its own conf; with it, it
         * reads the worker-token keys of every other topology. Reported, not used further.
         */
        @SuppressWarnings("unchecked")
        private void probeClusterSecret(Map<String, Object> conf, String topo) {
            Object payload = conf.get(Config.STORM_ZOOKEEPER_AUTH_PAYLOAD);
            record("secret in own conf", Config.STORM_ZOOKEEPER_AUTH_PAYLOAD, () -> {
                if (payload == null) {
                    throw new IOException("not in the topology's conf");
                }
                return "found the cluster's ZooKeeper payload";
            });
            if (payload == null) {
                return;
            }
            String root = String.valueOf(conf.get(Config.STORM_ZOOKEEPER_ROOT));
            record("zookeeper read", root + "/secretkeys/NIMBUS", () -> {
                try (CuratorFramework zk = CuratorUtils.newCurator(conf, (List<String>) conf.get(Config.STORM_ZOOKEEPER_SERVERS),
                        conf.get(Config.STORM_ZOOKEEPER_PORT), root,
                        new ZookeeperAuthInfo("digest", payload.toString().getBytes(StandardCharsets.UTF_8)), null)) {
                    zk.start();
                    if (!zk.blockUntilConnected(20, TimeUnit.SECONDS)) {
                        throw new IOException("ZooKeeper did not answer in 20 s");
                    }
                    for (String other : zk.getChildren().forPath("/secretkeys/NIMBUS")) {
                        if (!other.equals(topo)) {
                            String dir = "/secretkeys/NIMBUS/" + other;
                            for (String version : zk.getChildren().forPath(dir)) {
                                byte[] key = zk.getData().forPath(dir + "/" + version);
                                return "read " + other + "'s worker-token key (" + key.length + " bytes)";
                            }
                        }
                    }
                    return "listed the worker-token keys (no other topology's)";
                }
            });
        }

        private void probeSocket(String path) {
            if (path == null) {
                return;
            }
            record("connect", path, () -> {
                try (SocketChannel ch = SocketChannel.open(StandardProtocolFamily.UNIX)) {
                    ch.connect(UnixDomainSocketAddress.of(path));
                    return "connected";
                }
            });
        }

        private void probeDir(File dir) {
            record("list", dir.getPath(), () -> String.valueOf(names(dir)));
            for (File f : list(dir)) {
                if (f.isFile()) {
                    probeRead(f.toPath());
                }
            }
            probeWrite(dir.toPath());
        }

        private void probeRead(Path p) {
            record("read", p.toString(), () -> {
                byte[] b = Files.readAllBytes(p);
                return b.length + " bytes";
            });
        }

        private void probeWrite(Path dir) {
            record("write", dir.toString(), () -> {
                Path f = dir.resolve("hostile-" + ProcessHandle.current().pid());
                Files.write(f, "written by a hostile worker\n".getBytes(StandardCharsets.UTF_8));
                return "created " + f;
            });
        }

        private void probeSignals(Map<String, Object> conf) {
            Object s = conf.get(SIGNAL);
            String sig = s == null ? "0" : s.toString();
            long self = ProcessHandle.current().pid();
            long parent = ProcessHandle.current().parent().map(ProcessHandle::pid).orElse(-1L);
            List<String> pids = new ArrayList<>(split(conf.get(PIDS)));
            File[] procs = new File("/proc").listFiles((d, n) -> n.matches("[0-9]+"));
            int others = 0;
            for (File f : procs == null ? new File[0] : procs) {
                try {  // root's processes are refused anyway: those of other users are the question
                    if (others < MAX_ENTRIES && !Files.getOwner(f.toPath()).getName().equals("root")) {
                        pids.add(f.getName());
                        others++;
                    }
                } catch (IOException e) {
                    // gone meanwhile
                }
            }
            if (!sig.matches("[0-9]{1,2}")) {
                record("signal", sig, () -> {
                    throw new IllegalArgumentException(SIGNAL + " must be a signal number");
                });
                return;
            }
            for (String pid : pids) {
                if (!pid.matches("[0-9]{1,9}") || pid.equals(String.valueOf(self)) || pid.equals(String.valueOf(parent))) {
                    continue;  // not a pid; itself and the LogWriter that runs it
                }
                record("signal " + sig, pid, () -> {
                    Process p = new ProcessBuilder("/bin/sh", "-c", "kill -" + sig + " " + pid)
                        .redirectErrorStream(true).start();
                    String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
                    if (!p.waitFor(10, TimeUnit.SECONDS) || p.exitValue() != 0) {
                        throw new IOException("kill exit " + (p.isAlive() ? "timeout" : p.exitValue()) + ": " + out);
                    }
                    return "signalled";
                });
            }
        }

        private interface Attempt {
            String run() throws Exception;
        }

        private void record(String probe, String target, Attempt attempt) {
            Map<String, Object> r = new LinkedHashMap<>();
            r.put("probe", probe);
            r.put("target", target);
            try {
                r.put("detail", attempt.run());
                r.put("ok", true);
            } catch (Exception e) {
                r.put("detail", e.getClass().getSimpleName() + ": " + e.getMessage());
                r.put("ok", false);
            }
            report.add(r);
            LOG.info("BERTH-HOSTILE {}", JSONValue.toJSONString(r));
        }

        private void writeReport() {
            String dir = System.getProperty("workers.artifacts") + "/" + System.getProperty("storm.id") + "/"
                         + System.getProperty("worker.port");
            try {
                Path tmp = Paths.get(dir, REPORT + ".tmp");
                Files.write(tmp, JSONValue.toJSONString(report).getBytes(StandardCharsets.UTF_8));
                Files.move(tmp, Paths.get(dir, REPORT), StandardCopyOption.ATOMIC_MOVE);
                LOG.info("BERTH-HOSTILE-DONE {} probes, report {}/{}", report.size(), dir, REPORT);
            } catch (IOException e) {
                LOG.error("BERTH-HOSTILE-DONE {} probes, no report: {}", report.size(), e.toString());
            }
        }

        private static List<File> list(File dir) {
            File[] files = dir.listFiles();
            List<File> out = new ArrayList<>();
            if (files != null) {
                for (int i = 0; i < files.length && i < MAX_ENTRIES; i++) {
                    out.add(files[i]);
                }
            }
            return out;
        }

        private static List<String> names(File dir) throws IOException {
            String[] names = dir.list();
            if (names == null) {
                throw new IOException("cannot list " + dir);
            }
            return List.of(names);
        }

        private static String str(Object o) {
            return o == null ? null : o.toString();
        }

        private static List<String> split(Object o) {
            List<String> out = new ArrayList<>();
            if (o instanceof List<?> l) {
                l.forEach(x -> out.add(String.valueOf(x)));
            } else if (o != null) {
                for (String s : o.toString().split(",")) {
                    if (!s.isBlank()) {
                        out.add(s.trim());
                    }
                }
            }
            return out;
        }

        @Override
        public void nextTuple() {
            try {
                Thread.sleep(100);  // a spout must not spin; this one has nothing to emit
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }

        @Override
        public void declareOutputFields(OutputFieldsDeclarer declarer) {
            declarer.declare(new Fields("nothing"));
        }
    }
}

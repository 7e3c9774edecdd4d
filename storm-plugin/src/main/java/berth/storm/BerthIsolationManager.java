package berth.storm;

import java.io.File;
import java.io.IOException;
import java.net.URLEncoder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.storm.container.ResourceIsolationInterface;
import org.apache.storm.daemon.supervisor.ExitCodeCallback;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Storm's resource isolation plugin for berth: every call goes to {@code berth serve --storm} on
 * this node, over its unix socket, and berth does every privileged step (storm.yaml:
 * {@code storm.resource.isolation.plugin: berth.storm.BerthIsolationManager}).
 *
 * <p>One instance serves every slot thread of the supervisor. An exception from launch, kill,
 * forceKill, areAllProcessesDead, cleanup or profiling makes Storm's supervisor exit (Slot exits
 * 20), so those never throw for what berth or the worker did: each failure is logged here with
 * what berth said, and answered the safe way (a launch that failed reports the exit code
 * {@link #LAUNCH_FAILED}; a worker whose state is unknown is not dead). Only a configuration that
 * cannot work makes {@code prepare} throw. Every call has a deadline.
 *
 * <p>Exits: berth keeps each worker's exit, with the worker's own code, until this plugin has run
 * its callback and acknowledged it; a thread of the plugin fetches them (long poll). An exit of a
 * worker this instance did not launch (launched before the supervisor restarted, or cleaned up
 * meanwhile) is logged and acknowledged.
 */
public class BerthIsolationManager implements ResourceIsolationInterface {
    private static final Logger LOG = LoggerFactory.getLogger(BerthIsolationManager.class);

    /** What a launch that berth refused, or could not be asked for, reports: docker's "the launcher failed". */
    public static final int LAUNCH_FAILED = 125;
    static final String SOCKET_KEY = "berth.api.socket";
    static final String STATE_DIR_KEY = "berth.state.dir";
    static final String DEFAULT_STATE_DIR = "/var/lib/berth/state";
    static final int MAX_PENDING = 4096;

    long callMs = 10_000;
    long launchMs = 60_000;
    long profileMs = 300_000;
    /** Whether a launch starts the exit thread (tests drive it by hand). */
    boolean pollOnLaunch = true;

    private BerthClient client;
    private final Map<String, int[]> reserved = new ConcurrentHashMap<>();
    final Map<String, ExitCodeCallback> callbacks = new ConcurrentHashMap<>();
    private final AtomicBoolean reachable = new AtomicBoolean(true);
    private ExitPoller poller;

    @Override
    public void prepare(Map<String, Object> conf) throws IOException {
        client = new BerthClient(socketPath(conf));
        poller = new ExitPoller(client, this);
        try {
            BerthClient.Response r = client.get("/storm/v1/hello", callMs);
            if (r.ok()) {
                LOG.info("berth: {} answers at {}", r.body(), client.socket());
            } else {
                LOG.warn("berth at {} refuses this supervisor: {}", client.socket(), describe(r));
            }
        } catch (IOException e) {
            unreachable("prepare", e);
        }
        if ("supervisor".equals(System.getProperty("daemon.name"))) {
            poller.start(); // other JVMs (storm kill_workers) launch nothing: they leave exits to the supervisor
        }
    }

    /** {@code berth.api.socket}, else {@code <berth.state.dir>/api.sock}, as berth derives it. */
    static Path socketPath(Map<String, Object> conf) throws IOException {
        Object socket = conf.get(SOCKET_KEY);
        Object state = conf.get(STATE_DIR_KEY);
        String path = socket != null ? socket.toString()
            : (state != null ? state.toString() : DEFAULT_STATE_DIR) + "/api.sock";
        if (!path.startsWith("/")) {
            throw new IOException(SOCKET_KEY + " must be an absolute path to berth's API socket, got " + path);
        }
        return Path.of(path);
    }

    @Override
    public void reserveResourcesForWorker(String workerId, Integer workerMemory, Integer workerCpu, String numaId) {
        if (reserved.size() >= MAX_PENDING) {
            LOG.warn("berth: {} reservations were never launched; forgetting them", reserved.size());
            reserved.clear();
        }
        reserved.put(workerId, new int[] {workerMemory == null ? -1 : workerMemory, workerCpu == null ? -1 : workerCpu});
    }

    @Override
    public void launchWorkerProcess(String user, String topologyId, Map<String, Object> topoConf, int port,
                                    String workerId, List<String> command, Map<String, String> env, String logPrefix,
                                    ExitCodeCallback processExitCallback, File targetDir) {
        int[] res = reserved.remove(workerId);
        Map<String, Object> body = new LinkedHashMap<>();
        body.put("worker_id", workerId);
        body.put("topology_id", topologyId);
        body.put("port", port);
        body.put("user", user);
        body.put("command", command);
        body.put("env", env);
        Object image = topoConf == null ? null : topoConf.get("topology.oci.image");
        if (image != null) {
            body.put("image", image.toString());
        }
        if (res != null && res[0] > 0) {
            body.put("memory_mb", res[0]);
        }
        if (res != null && res[1] > 0) {
            body.put("cpu_percent", res[1]);
        }
        body.put("target_dir", targetDir.getAbsolutePath());
        callbacks.put(workerId, processExitCallback);
        if (pollOnLaunch) {
            poller.start();
        }
        String what = "worker " + workerId + " of " + topologyId + " on port " + port + " as " + user;
        String failure;
        try {
            BerthClient.Response r = client.post("/storm/v1/workers", body, launchMs);
            if (r.ok()) {
                reachableAgain();
                LOG.info("berth launched {}: {}", what, r.body());
                return;
            }
            failure = "berth refused to launch " + what + ": " + describe(r);
        } catch (IOException e) {
            failure = "berth could not be asked to launch " + what + " (" + e + "; is `berth serve --storm` "
                + "running, with its socket at " + client.socket() + "?)";
        }
        LOG.error("{}. Nothing was started; Storm's supervisor notices at the worker's start timeout "
            + "(supervisor.worker.start.timeout.secs) and tries again. Reported as exit code {}.", failure, LAUNCH_FAILED);
        if (callbacks.remove(workerId) != null) {
            processExitCallback.call(LAUNCH_FAILED);
        }
    }

    @Override
    public long getMemoryUsage(String user, String workerId, int port) {
        try {
            BerthClient.Response r = client.get("/storm/v1/workers/" + enc(workerId) + "/memory", callMs);
            if (r.ok()) {
                reachableAgain();
                return number(object(r.body()).get("bytes"));
            }
            LOG.warn("berth: memory of worker {}: {}", workerId, describe(r));
        } catch (IOException e) {
            unreachable("memory usage (counted as unknown)", e);
        }
        return -1; // Storm counts it as 0: no enforcement on a number nobody knows
    }

    @Override
    public long getSystemFreeMemoryMb() throws IOException {
        try {
            BerthClient.Response r = client.get("/storm/v1/memory", callMs);
            if (r.ok()) {
                reachableAgain();
                return number(object(r.body()).get("free_mb"));
            }
            LOG.warn("berth: free memory: {}; reading MemAvailable here instead", describe(r));
        } catch (IOException e) {
            unreachable("free memory (MemAvailable read here instead)", e);
        }
        return memAvailableMb(Path.of("/proc/meminfo")); // never 0 by mistake: Storm would shoot any worker over its limit
    }

    static long memAvailableMb(Path meminfo) throws IOException {
        for (String line : Files.readAllLines(meminfo, StandardCharsets.US_ASCII)) {
            if (line.startsWith("MemAvailable:")) {
                return Long.parseLong(line.split("\\s+")[1]) / 1024;
            }
        }
        throw new IOException("no MemAvailable in " + meminfo);
    }

    @Override
    public void kill(String user, String workerId) {
        post("kill", workerId, "SIGTERM");
    }

    @Override
    public void forceKill(String user, String workerId) {
        post("force-kill", workerId, "SIGKILL");
    }

    private void post(String action, String workerId, String what) {
        try {
            BerthClient.Response r = client.post("/storm/v1/workers/" + enc(workerId) + "/" + action, null, callMs);
            if (!r.ok() && r.status() != 404) {
                LOG.error("berth: {} of worker {} failed: {}", what, workerId, describe(r));
            }
        } catch (IOException e) {
            unreachable(what + " of worker " + workerId, e);
        }
    }

    @Override
    public boolean areAllProcessesDead(String user, String workerId) {
        try {
            BerthClient.Response r = client.get("/storm/v1/workers/" + enc(workerId) + "/dead", callMs);
            if (r.ok()) {
                reachableAgain();
                return Boolean.TRUE.equals(object(r.body()).get("dead"));
            }
            LOG.error("berth: is worker {} dead? {}; answering no", workerId, describe(r));
        } catch (IOException e) {
            unreachable("liveness of worker " + workerId + " (answered: not known dead)", e);
        }
        return false; // not known dead: Storm kills again and waits, rather than launch beside a live worker
    }

    @Override
    public void cleanup(String user, String workerId, int port) {
        reserved.remove(workerId);
        callbacks.remove(workerId);
        try {
            BerthClient.Response r = client.post("/storm/v1/workers/" + enc(workerId) + "/cleanup", null, launchMs);
            if (!r.ok()) {
                LOG.error("berth: cleanup of worker {} failed: {}", workerId, describe(r));
            }
        } catch (IOException e) {
            unreachable("cleanup of worker " + workerId + " (berth removes it when it finds its directory gone)", e);
        }
    }

    @Override
    public boolean runProfilingCommand(String user, String workerId, List<String> command, Map<String, String> env,
                                       String logPrefix, File targetDir) {
        Map<String, Object> body = new LinkedHashMap<>();
        body.put("command", command);
        try {
            BerthClient.Response r = client.post("/storm/v1/workers/" + enc(workerId) + "/profile", body, profileMs);
            if (!r.ok()) {
                LOG.error("{}berth: profiling worker {} failed: {}", prefix(logPrefix), workerId, describe(r));
                return false;
            }
            Map<String, Object> out = object(r.body());
            long code = number(out.get("exit_code"));
            LOG.info("{}berth: {} in worker {} exited {}: {}", prefix(logPrefix), command, workerId, code, out.get("output"));
            return code == 0;
        } catch (IOException e) {
            unreachable("profiling of worker " + workerId, e);
            return false;
        }
    }

    @Override
    public boolean isResourceManaged() {
        return true;
    }

    /** Called by the poller for each exit, once per worker and container. */
    void deliver(String workerId, String containerId, Long code, String how) {
        ExitCodeCallback cb = callbacks.remove(workerId);
        int exit = code == null ? -1 : code.intValue();
        if (cb == null) {
            LOG.info("berth: worker {} (container {}) ended, {}; this supervisor holds no callback for it "
                + "(launched before it restarted, or cleaned up)", workerId, containerId, how);
            return;
        }
        LOG.info("berth: worker {} (container {}) ended, {}", workerId, containerId, how);
        try {
            cb.call(exit);
        } catch (RuntimeException e) {
            LOG.error("berth: the exit callback of worker {} failed", workerId, e);
        }
    }

    /** berth answered, but not what this plugin understands (a version mismatch, a bug). */
    static final class BadAnswer extends IOException {
        private static final long serialVersionUID = 1L;

        BadAnswer(String message) {
            super(message);
        }
    }

    void unreachable(String what, IOException e) {
        if (e instanceof BadAnswer) {
            LOG.error("berth: {} failed: {}", what, e.getMessage());
            return;
        }
        if (reachable.getAndSet(false)) {
            LOG.error("berth at {} does not answer ({}): {} failed. Workers keep running; berth's calls fail "
                + "until `berth serve --storm` answers again", client.socket(), e, what);
        } else {
            LOG.debug("berth still does not answer: {} failed ({})", what, e.toString());
        }
    }

    void reachableAgain() {
        if (!reachable.getAndSet(true)) {
            LOG.info("berth at {} answers again", client.socket());
        }
    }

    static String describe(BerthClient.Response r) {
        try {
            Object detail = object(r.body()).get("detail");
            if (detail instanceof List<?> items) {
                List<String> parts = new ArrayList<>();
                for (Object item : items) {
                    if (item instanceof Map<?, ?> m) {
                        Object loc = m.get("loc");
                        String where = loc instanceof List<?> l && !l.isEmpty() ? String.valueOf(l.get(l.size() - 1)) : "";
                        parts.add((where.isEmpty() ? "" : where + ": ") + m.get("msg"));
                    }
                }
                return "HTTP " + r.status() + ": " + String.join("; ", parts);
            }
            return "HTTP " + r.status() + ": " + detail;
        } catch (IOException e) {
            String body = r.body();
            return "HTTP " + r.status() + ": " + (body.length() > 500 ? body.substring(0, 500) + "…" : body);
        }
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> object(String body) throws IOException {
        Object v;
        try {
            v = Json.parse(body);
        } catch (IllegalArgumentException e) {
            throw new BadAnswer("berth answered something that is not JSON: " + e.getMessage());
        }
        if (!(v instanceof Map)) {
            throw new BadAnswer("berth answered " + body + " where an object was expected");
        }
        return (Map<String, Object>) v;
    }

    static long number(Object v) throws IOException {
        if (v instanceof Number n) {
            return n.longValue();
        }
        throw new BadAnswer("berth answered " + v + " where a number was expected");
    }

    private static String enc(String id) {
        return URLEncoder.encode(id, StandardCharsets.UTF_8);
    }

    private static String prefix(String logPrefix) {
        return logPrefix == null ? "" : logPrefix + ": ";
    }

    /** Stops the exit thread (tests; Storm never closes a plugin). */
    void close() {
        poller.stop();
    }
}

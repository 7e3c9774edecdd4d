package berth.storm;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The plugin's one thread for exits: fetch the exits berth keeps (a long poll), run each
 * worker's callback once, then acknowledge them. If an acknowledgement is lost (berth restarted
 * in between), berth hands the exit out again and this thread acknowledges it without running
 * the callback a second time.
 */
final class ExitPoller implements Runnable {
    private static final Logger LOG = LoggerFactory.getLogger(ExitPoller.class);
    static final int WAIT_S = 25;
    static final int MAX_DELIVERED = 4096;

    long retryMs = 1_000;
    long maxRetryMs = 10_000;
    private final BerthClient client;
    private final BerthIsolationManager plugin;
    private final Set<String> delivered = Collections.newSetFromMap(new LinkedHashMap<>() {
        private static final long serialVersionUID = 1L;

        @Override
        protected boolean removeEldestEntry(Map.Entry<String, Boolean> eldest) {
            return size() > MAX_DELIVERED;
        }
    });
    private Thread thread;
    private volatile boolean stopped;

    ExitPoller(BerthClient client, BerthIsolationManager plugin) {
        this.client = client;
        this.plugin = plugin;
    }

    synchronized void start() {
        if (thread == null && !stopped) {
            thread = new Thread(this, "berth-exits");
            thread.setDaemon(true);
            thread.start();
        }
    }

    synchronized boolean started() {
        return thread != null;
    }

    void stop() {
        Thread t;
        synchronized (this) {
            stopped = true;
            t = thread;
        }
        if (t != null) {
            t.interrupt();
        }
    }

    @Override
    public void run() {
        long delay = retryMs;
        while (!stopped) {
            try {
                pollOnce(WAIT_S);
                plugin.reachableAgain();
                delay = retryMs;
            } catch (IOException e) {
                if (stopped) {
                    return;
                }
                plugin.unreachable("fetching the workers' exits", e);
                try {
                    Thread.sleep(delay);
                } catch (InterruptedException ie) {
                    return;
                }
                delay = Math.min(delay * 2, maxRetryMs);
            } catch (RuntimeException e) {
                LOG.error("berth: handling the workers' exits failed; trying again", e);
                try {
                    Thread.sleep(maxRetryMs);
                } catch (InterruptedException ie) {
                    return;
                }
            }
        }
    }

    /** One fetch, the callbacks, one acknowledgement; the number of exits handled. */
    int pollOnce(int waitS) throws IOException {
        BerthClient.Response r = client.get("/storm/v1/exits?wait=" + waitS, (waitS + 15) * 1000L);
        if (!r.ok()) {
            throw new IOException("fetching exits: " + BerthIsolationManager.describe(r));
        }
        Object exits = BerthIsolationManager.object(r.body()).get("exits");
        if (!(exits instanceof List<?> items) || items.isEmpty()) {
            return 0;
        }
        List<Map<String, Object>> acks = new ArrayList<>();
        for (Object item : items) {
            if (!(item instanceof Map<?, ?> ex)) {
                continue;
            }
            String workerId = String.valueOf(ex.get("worker_id"));
            String containerId = String.valueOf(ex.get("container_id"));
            Object code = ex.get("exit_code");
            if (delivered.add(workerId + "/" + containerId)) {
                plugin.deliver(workerId, containerId, code instanceof Number n ? n.longValue() : null, how(ex));
            }
            Map<String, Object> ack = new LinkedHashMap<>();
            ack.put("worker_id", workerId);
            ack.put("container_id", containerId);
            acks.add(ack);
        }
        Map<String, Object> body = new LinkedHashMap<>();
        body.put("exits", acks);
        BerthClient.Response a = client.post("/storm/v1/exits/ack", body, 10_000);
        if (!a.ok()) {
            throw new IOException("acknowledging exits: " + BerthIsolationManager.describe(a));
        }
        return acks.size();
    }

    /** The exit in words, as berth says it: exit code 3, killed by SIGKILL (out of memory), … */
    static String how(Map<?, ?> ex) {
        if (Boolean.TRUE.equals(ex.get("status_lost"))) {
            return "status lost (its monitor was gone when it ended)";
        }
        String oom = Boolean.TRUE.equals(ex.get("oom_killed")) ? " (out of memory)" : "";
        Object sig = ex.get("signal");
        if (sig instanceof Number n) {
            return "killed by signal " + n.longValue() + oom + " (exit code " + ex.get("exit_code") + ")";
        }
        return "exit code " + ex.get("exit_code") + oom;
    }
}

package berth.storm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CopyOnWriteArrayList;
import org.apache.storm.daemon.supervisor.ExitCodeCallback;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The plugin against a fake berth on a unix socket: the exact requests each of Storm's calls
 * makes, and what each call does when berth refuses, is not there, or does not answer: it
 * never throws what would make Storm's supervisor exit, and never hangs.
 */
class BerthIsolationManagerTest {
    /** Far above any deadline the tests set: reached only if a call hangs. */
    private static final Duration HANG = Duration.ofSeconds(60);
    private static final String ROOT = "/var/storm/workers/9c3e-41ab";

    @TempDir
    Path dir;
    private FakeBerth berth;
    private BerthIsolationManager plugin;
    private final List<Integer> codes = new CopyOnWriteArrayList<>();
    private final ExitCodeCallback callback = codes::add;

    @BeforeEach
    void start() throws IOException {
        berth = new FakeBerth(dir);
        plugin = prepared(berth.socket);
        berth.requests.clear();
    }

    @AfterEach
    void stop() throws IOException {
        plugin.close();
        berth.close();
    }

    private BerthIsolationManager prepared(Path socket) throws IOException {
        BerthIsolationManager p = new BerthIsolationManager();
        p.callMs = 500;
        p.launchMs = 500;
        p.profileMs = 500;
        p.pollOnLaunch = false;
        Map<String, Object> conf = new HashMap<>();
        conf.put("berth.api.socket", socket.toString());
        p.prepare(conf);
        return p;
    }

    private void launch(String workerId) {
        Map<String, Object> topoConf = new HashMap<>();
        topoConf.put("topology.oci.image", "berth/storm:latest");
        Map<String, String> env = new LinkedHashMap<>();
        env.put("LD_LIBRARY_PATH", "/usr/local/lib");
        plugin.launchWorkerProcess("berth-alice", "wc-1-1700000000", topoConf, 6700, workerId,
            List.of("java", "-server", "-Dx=a b"), env, "Worker Process " + workerId, callback,
            new File("/var/storm/workers/" + workerId));
    }

    @Test
    void prepareAsksBerthWhoAnswersAndFindsItsSocket() throws Exception {
        BerthIsolationManager p = prepared(berth.socket);
        assertEquals(new FakeBerth.Request("GET", "/storm/v1/hello", ""), berth.next());
        p.close();
        assertEquals(Path.of("/srv/berth/api.sock"),
            BerthIsolationManager.socketPath(Map.of("berth.state.dir", "/srv/berth")));
        assertEquals(Path.of("/var/lib/berth/state/api.sock"), BerthIsolationManager.socketPath(Map.of()));
        IOException e = assertThrows(IOException.class,
            () -> BerthIsolationManager.socketPath(Map.of("berth.api.socket", "api.sock")));
        assertTrue(e.getMessage().contains("berth.api.socket must be an absolute path"));
    }

    @Test
    void prepareDoesNotFailWhenBerthIsNotRunning() throws Exception {
        BerthIsolationManager p = assertTimeoutPreemptively(HANG, () -> prepared(dir.resolve("nobody.sock")));
        p.close();
    }

    @Test
    void aLaunchSendsStormsRequestWithTheReservedResources() throws Exception {
        berth.reply = r -> new FakeBerth.Reply(201, "{\"container_id\":\"c1\"}");
        plugin.reserveResourcesForWorker("9c3e-41ab", 896, 100, null);
        launch("9c3e-41ab");
        FakeBerth.Request r = berth.next();
        assertEquals("POST", r.method());
        assertEquals("/storm/v1/workers", r.path());
        assertEquals("{\"worker_id\":\"9c3e-41ab\",\"topology_id\":\"wc-1-1700000000\",\"port\":6700,"
            + "\"user\":\"berth-alice\",\"command\":[\"java\",\"-server\",\"-Dx=a b\"],"
            + "\"env\":{\"LD_LIBRARY_PATH\":\"/usr/local/lib\"},\"image\":\"berth/storm:latest\","
            + "\"memory_mb\":896,\"cpu_percent\":100,\"target_dir\":\"" + ROOT + "\"}", r.body());
        assertEquals(List.of(), codes);
        launch("9c3e-41ab"); // launched again (a relaunch): nothing reserved any more, berth's defaults
        assertFalse(berth.next().body().contains("memory_mb"));
    }

    @Test
    void aRefusedLaunchIsReportedAsAnExitAndNeverThrows() throws Exception {
        berth.reply = r -> new FakeBerth.Reply(409,
            "{\"detail\":[{\"loc\":[\"image\"],\"msg\":\"'evil:1' is not in the node's allowed images\","
                + "\"type\":\"PolicyError\"}]}");
        launch("w1");
        assertEquals(List.of(BerthIsolationManager.LAUNCH_FAILED), codes);
        assertEquals("HTTP 409: image: 'evil:1' is not in the node's allowed images",
            BerthIsolationManager.describe(new BerthClient.Response(409, berth.reply.apply(null).body())));
        assertFalse(plugin.callbacks.containsKey("w1"));
    }

    @Test
    void aLaunchWithBerthDownOrHungEndsAndReportsAnExit() throws Exception {
        berth.reply = r -> null; // never answers
        assertTimeoutPreemptively(HANG, () -> launch("w1"));
        assertEquals(List.of(BerthIsolationManager.LAUNCH_FAILED), codes);
        berth.close();
        assertTimeoutPreemptively(HANG, () -> launch("w2"));
        assertEquals(List.of(125, 125), codes);
    }

    @Test
    void killForceKillAndCleanupAskBerthAndNeverThrow() throws Exception {
        plugin.kill("berth-alice", "w1");
        assertEquals(new FakeBerth.Request("POST", "/storm/v1/workers/w1/kill", ""), berth.next());
        plugin.forceKill("berth-alice", "w1");
        assertEquals(new FakeBerth.Request("POST", "/storm/v1/workers/w1/force-kill", ""), berth.next());
        plugin.cleanup("berth-alice", "w1", 6700);
        assertEquals(new FakeBerth.Request("POST", "/storm/v1/workers/w1/cleanup", ""), berth.next());
        berth.reply = r -> new FakeBerth.Reply(500, "{\"detail\":[{\"loc\":[],\"msg\":\"internal\",\"type\":\"x\"}]}");
        plugin.kill("berth-alice", "w1");
        plugin.cleanup("berth-alice", "w1", -1);
        berth.reply = r -> null;
        assertTimeoutPreemptively(HANG, () -> plugin.forceKill("berth-alice", "w1"));
        berth.close();
        plugin.kill("berth-alice", "w1");
        plugin.forceKill("berth-alice", "w1");
        plugin.cleanup("berth-alice", "w1", 6700);
    }

    @Test
    void aWorkerIsDeadOnlyWhenBerthSaysSo() throws Exception {
        berth.reply = r -> FakeBerth.Reply.ok("{\"dead\":true}");
        assertTrue(plugin.areAllProcessesDead("berth-alice", "w1"));
        assertEquals(new FakeBerth.Request("GET", "/storm/v1/workers/w1/dead", ""), berth.next());
        berth.reply = r -> FakeBerth.Reply.ok("{\"dead\":false}");
        assertFalse(plugin.areAllProcessesDead("berth-alice", "w1"));
        berth.reply = r -> new FakeBerth.Reply(409, "{\"detail\":[{\"loc\":[\"engine\"],\"msg\":\"down\",\"type\":\"x\"}]}");
        assertFalse(plugin.areAllProcessesDead("berth-alice", "w1"));
        berth.reply = r -> FakeBerth.Reply.ok("not json");
        assertFalse(plugin.areAllProcessesDead("berth-alice", "w1"));
        berth.close();
        assertFalse(plugin.areAllProcessesDead("berth-alice", "w1"));
    }

    @Test
    void memoryIsBerthsAndUnknownWhenBerthIsNot() throws Exception {
        berth.reply = r -> FakeBerth.Reply.ok("{\"bytes\":123456789}");
        assertEquals(123456789L, plugin.getMemoryUsage("berth-alice", "w1", 6700));
        assertEquals(new FakeBerth.Request("GET", "/storm/v1/workers/w1/memory", ""), berth.next());
        berth.close();
        assertEquals(-1L, plugin.getMemoryUsage("berth-alice", "w1", 6700));
    }

    @Test
    void freeMemoryIsBerthsElseMemAvailableNeverZeroByMistake() throws Exception {
        berth.reply = r -> FakeBerth.Reply.ok("{\"free_mb\":777,\"source\":\"MemAvailable\"}");
        assertEquals(777L, plugin.getSystemFreeMemoryMb());
        Path meminfo = dir.resolve("meminfo");
        Files.writeString(meminfo, "MemTotal: 8000000 kB\nMemAvailable:    4194304 kB\n");
        assertEquals(4096L, BerthIsolationManager.memAvailableMb(meminfo));
        berth.close();
        assertTrue(plugin.getSystemFreeMemoryMb() > 0);
    }

    @Test
    void profilingRunsStormsCommandAndSaysWhetherItWorked() throws Exception {
        List<String> cmd = List.of("/opt/storm/bin/flight.bash", "1", "jstack", "/var/log/storm/wa/wc-1/6700");
        berth.reply = r -> FakeBerth.Reply.ok("{\"exit_code\":0,\"output\":\"ok\"}");
        assertTrue(plugin.runProfilingCommand("berth-alice", "w1", cmd, Map.of(), "P ", new File("/x")));
        FakeBerth.Request r = berth.next();
        assertEquals("/storm/v1/workers/w1/profile", r.path());
        assertEquals("{\"command\":[\"/opt/storm/bin/flight.bash\",\"1\",\"jstack\",\"/var/log/storm/wa/wc-1/6700\"]}",
            r.body());
        berth.reply = q -> FakeBerth.Reply.ok("{\"exit_code\":127,\"output\":\"not found\"}");
        assertFalse(plugin.runProfilingCommand("berth-alice", "w1", cmd, Map.of(), "P ", new File("/x")));
        berth.close();
        assertFalse(plugin.runProfilingCommand("berth-alice", "w1", cmd, Map.of(), "P ", new File("/x")));
    }

    @Test
    void eachExitReachesItsCallbackOnceAndIsAcknowledged() throws Exception {
        String exit = "{\"exits\":[{\"worker_id\":\"w1\",\"container_id\":\"c1\",\"exit_code\":137,\"signal\":9,"
            + "\"oom_killed\":false,\"status_lost\":false},{\"worker_id\":\"w0\",\"container_id\":\"c0\","
            + "\"exit_code\":0,\"signal\":null}]}";
        berth.reply = r -> r.path().startsWith("/storm/v1/exits?") ? FakeBerth.Reply.ok(exit)
            : new FakeBerth.Reply(201, "{}");
        launch("w1");
        berth.next();
        ExitPoller poller = new ExitPoller(new BerthClient(berth.socket), plugin);
        assertEquals(2, poller.pollOnce(0));
        assertEquals(new FakeBerth.Request("GET", "/storm/v1/exits?wait=0", ""), berth.next());
        FakeBerth.Request ack = berth.next();
        assertEquals("/storm/v1/exits/ack", ack.path());
        assertEquals("{\"exits\":[{\"worker_id\":\"w1\",\"container_id\":\"c1\"},"
            + "{\"worker_id\":\"w0\",\"container_id\":\"c0\"}]}", ack.body());
        assertEquals(List.of(137), codes); // w0: no callback here (launched before a restart): acknowledged
        assertEquals(2, poller.pollOnce(0)); // the acknowledgement was lost: handed out again ...
        assertEquals(List.of(137), codes); // ... and not delivered twice
        assertEquals("killed by signal 9 (exit code 137)", ExitPoller.how(Map.of("signal", 9L, "exit_code", 137L)));
    }

    @Test
    void theExitThreadRunsInTheSupervisorAndSurvivesBerthGoingAway() throws Exception {
        List<FakeBerth.Request> seen = Collections.synchronizedList(new ArrayList<>());
        berth.reply = r -> {
            seen.add(r);
            return r.path().startsWith("/storm/v1/exits?") ? FakeBerth.Reply.ok(
                "{\"exits\":[{\"worker_id\":\"w1\",\"container_id\":\"c1\",\"exit_code\":3,\"signal\":null}]}")
                : new FakeBerth.Reply(201, "{}");
        };
        plugin.pollOnLaunch = true;
        launch("w1"); // the first launch starts the thread (outside the supervisor daemon too)
        assertTimeoutPreemptively(HANG, () -> {
            while (codes.isEmpty()) {
                Thread.sleep(10);
            }
        });
        assertEquals(List.of(3), codes);
    }

    @Test
    void concurrentSlotsEachGetTheirOwnLaunch() throws Exception {
        berth.reply = r -> new FakeBerth.Reply(201, "{}");
        List<Thread> slots = new ArrayList<>();
        for (int i = 0; i < 8; i++) {
            String id = "w" + i;
            slots.add(new Thread(() -> {
                plugin.reserveResourcesForWorker(id, 100 + id.hashCode() % 7, 50, null);
                launch(id);
            }));
        }
        slots.forEach(Thread::start);
        for (Thread t : slots) {
            t.join(HANG.toMillis());
        }
        List<String> bodies = new ArrayList<>();
        berth.requests.forEach(r -> bodies.add(r.body()));
        assertEquals(8, bodies.size());
        for (int i = 0; i < 8; i++) {
            String id = "w" + i;
            assertTrue(bodies.stream().anyMatch(b -> b.startsWith("{\"worker_id\":\"" + id + "\"")
                && b.contains("\"memory_mb\":" + (100 + id.hashCode() % 7) + ",")), id);
        }
        assertEquals(8, plugin.callbacks.size());
    }

    @Test
    void jsonRoundTripsWhatBerthAndStormUse() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("s", "a\"b\\c\n\u0001é");
        m.put("n", 3);
        m.put("l", List.of(true, false));
        m.put("z", null);
        String text = Json.write(m);
        assertEquals("{\"s\":\"a\\\"b\\\\c\\n\\u0001é\",\"n\":3,\"l\":[true,false],\"z\":null}", text);
        Map<String, Object> back = new LinkedHashMap<>(m);
        back.put("n", 3L);
        assertEquals(back, Json.parse(text));
        assertEquals(List.of(1.5, -2L, "\u00e9/"), Json.parse(" [1.5, -2, \"\\u00e9\\/\"] "));
        for (String bad : List.of("{", "[1,]", "\"x", "{\"a\" 1}", "01x", "[" .repeat(40) + "]".repeat(40), "{} x")) {
            assertThrows(IllegalArgumentException.class, () -> Json.parse(bad), bad);
        }
    }

    @Test
    void theClientReadsChunkedAndLengthDelimitedAnswers() throws Exception {
        byte[] chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n"
            .getBytes(java.nio.charset.StandardCharsets.US_ASCII);
        assertEquals(new BerthClient.Response(200, "{\"a\":1}"), BerthClient.parse(chunked, true));
        byte[] partial = "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}".getBytes(java.nio.charset.StandardCharsets.US_ASCII);
        assertEquals(null, BerthClient.parse(partial, false));
        assertThrows(IOException.class, () -> BerthClient.parse(partial, true));
        assertThrows(IOException.class, () -> BerthClient.parse("SSH-2.0\r\n\r\n".getBytes(), true));
    }
}

package berth.storm;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Locale;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;

/**
 * A stand-in for {@code berth serve --storm}: a unix socket that records each request exactly as
 * it arrived and answers what the test says ({@link #reply}); a reply of {@code null} never
 * answers (a hung berth).
 */
final class FakeBerth implements AutoCloseable {
    record Request(String method, String path, String body) {
    }

    record Reply(int status, String body) {
        static Reply ok(String body) {
            return new Reply(200, body);
        }
    }

    final Path socket;
    final BlockingQueue<Request> requests = new LinkedBlockingQueue<>();
    volatile Function<Request, Reply> reply = r -> Reply.ok("{}");
    private final ServerSocketChannel server;
    private final Thread thread;
    private final CountDownLatch hung = new CountDownLatch(1);

    FakeBerth(Path dir) throws IOException {
        socket = dir.resolve("api.sock");
        Files.deleteIfExists(socket);
        server = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
        server.bind(UnixDomainSocketAddress.of(socket));
        thread = new Thread(this::serve, "fake-berth");
        thread.setDaemon(true);
        thread.start();
    }

    private void serve() {
        while (server.isOpen()) {
            try {
                SocketChannel ch = server.accept();
                Thread t = new Thread(() -> handle(ch), "fake-berth-conn");
                t.setDaemon(true);
                t.start();
            } catch (IOException e) {
                return;
            }
        }
    }

    private void handle(SocketChannel ch) {
        try (ch) {
            ByteArrayOutputStream in = new ByteArrayOutputStream();
            ByteBuffer buf = ByteBuffer.allocate(8192);
            int headEnd = -1;
            int length = 0;
            while (true) {
                if (ch.read(buf) < 0) {
                    return;
                }
                in.write(buf.array(), 0, buf.position());
                buf.clear();
                String text = in.toString(StandardCharsets.UTF_8);
                if (headEnd < 0 && (headEnd = text.indexOf("\r\n\r\n")) >= 0) {
                    for (String line : text.substring(0, headEnd).split("\r\n")) {
                        if (line.toLowerCase(Locale.ROOT).startsWith("content-length:")) {
                            length = Integer.parseInt(line.substring(15).trim());
                        }
                    }
                }
                if (headEnd >= 0 && in.size() >= headEnd + 4 + length) {
                    String[] first = text.substring(0, text.indexOf("\r\n")).split(" ");
                    Request req = new Request(first[0], first[1], text.substring(headEnd + 4, headEnd + 4 + length));
                    requests.add(req);
                    Reply r = reply.apply(req);
                    if (r == null) {
                        hung.await();
                        return;
                    }
                    byte[] body = r.body().getBytes(StandardCharsets.UTF_8);
                    String head = "HTTP/1.1 " + r.status() + " X\r\ncontent-type: application/json\r\ncontent-length: "
                        + body.length + "\r\nconnection: close\r\n\r\n";
                    ch.write(ByteBuffer.wrap(head.getBytes(StandardCharsets.US_ASCII)));
                    ch.write(ByteBuffer.wrap(body));
                    return;
                }
            }
        } catch (IOException | InterruptedException e) {
            // the client went away: nothing to answer
        }
    }

    Request next() throws InterruptedException {
        Request r = requests.poll(30, TimeUnit.SECONDS);
        if (r == null) {
            throw new AssertionError("no request reached the fake berth");
        }
        return r;
    }

    @Override
    public void close() throws IOException {
        hung.countDown();
        server.close();
        Files.deleteIfExists(socket);
    }
}

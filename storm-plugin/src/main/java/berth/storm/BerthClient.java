package berth.storm;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.net.SocketTimeoutException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.Locale;

/**
 * HTTP/1.1 to {@code berth serve --storm} over its unix socket: one request per connection
 * ({@code Connection: close}), non-blocking I/O under one deadline per call, so that no call
 * can hang a slot thread of Storm's supervisor, whatever berth does. Thread-safe (it keeps no
 * connection).
 */
final class BerthClient {
    static final int MAX_RESPONSE = 1 << 20;

    /** A status and a body; {@code status} is that of HTTP. */
    record Response(int status, String body) {
        boolean ok() {
            return status >= 200 && status < 300;
        }
    }

    private final Path socket;

    BerthClient(Path socket) {
        this.socket = socket;
    }

    Path socket() {
        return socket;
    }

    Response get(String path, long timeoutMs) throws IOException {
        return call("GET", path, null, timeoutMs);
    }

    Response post(String path, Object body, long timeoutMs) throws IOException {
        return call("POST", path, body == null ? "" : Json.write(body), timeoutMs);
    }

    /**
     * One request. IOException when berth cannot be reached or does not answer within
     * {@code timeoutMs} (a {@code SocketTimeoutException} then).
     */
    Response call(String method, String path, String body, long timeoutMs) throws IOException {
        long deadline = System.nanoTime() + timeoutMs * 1_000_000L;
        byte[] payload = body == null ? new byte[0] : body.getBytes(StandardCharsets.UTF_8);
        String head = method + " " + path + " HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n"
            + (body == null ? "" : "Content-Type: application/json\r\nContent-Length: " + payload.length + "\r\n")
            + "\r\n";
        ByteBuffer out = ByteBuffer.allocate(head.length() + payload.length);
        out.put(head.getBytes(StandardCharsets.US_ASCII)).put(payload).flip();
        try (SocketChannel ch = SocketChannel.open(StandardProtocolFamily.UNIX);
             Selector sel = Selector.open()) {
            ch.configureBlocking(false);
            if (!ch.connect(UnixDomainSocketAddress.of(socket))) {
                await(ch, sel, SelectionKey.OP_CONNECT, deadline, "connect");
                ch.finishConnect();
            }
            while (out.hasRemaining()) {
                if (ch.write(out) == 0) {
                    await(ch, sel, SelectionKey.OP_WRITE, deadline, "send");
                }
            }
            ByteArrayOutputStream in = new ByteArrayOutputStream();
            ByteBuffer buf = ByteBuffer.allocate(16 * 1024);
            while (true) {
                int n = ch.read(buf);
                if (n < 0) {
                    break;
                }
                if (n == 0) {
                    Response done = parse(in.toByteArray(), false);
                    if (done != null) {
                        return done;
                    }
                    await(ch, sel, SelectionKey.OP_READ, deadline, "answer");
                    continue;
                }
                in.write(buf.array(), 0, n);
                buf.clear();
                if (in.size() > MAX_RESPONSE) {
                    throw new IOException("berth's answer to " + method + " " + path + " is larger than "
                        + MAX_RESPONSE + " bytes");
                }
            }
            Response done = parse(in.toByteArray(), true);
            if (done == null) {
                throw new IOException("berth closed the connection before answering " + method + " " + path);
            }
            return done;
        }
    }

    private static void await(SocketChannel ch, Selector sel, int op, long deadline, String what) throws IOException {
        SelectionKey key = ch.register(sel, op);
        try {
            while (true) {
                long left = (deadline - System.nanoTime()) / 1_000_000L;
                if (left <= 0) {
                    throw new SocketTimeoutException("berth did not " + what + " in time");
                }
                if (sel.select(left) > 0) {
                    sel.selectedKeys().clear();
                    return;
                }
            }
        } finally {
            key.cancel();
            sel.selectNow();
        }
    }

    /** The response in {@code raw}, or null while it is incomplete (and {@code eof} false). */
    static Response parse(byte[] raw, boolean eof) throws IOException {
        int end = indexOf(raw, "\r\n\r\n".getBytes(StandardCharsets.US_ASCII), 0);
        if (end < 0) {
            if (eof) {
                throw new IOException("berth's answer has no complete header");
            }
            return null;
        }
        String[] lines = new String(raw, 0, end, StandardCharsets.ISO_8859_1).split("\r\n");
        String[] status = lines[0].split(" ", 3);
        if (status.length < 2 || !status[0].startsWith("HTTP/1.")) {
            throw new IOException("not an HTTP answer: " + lines[0]);
        }
        int code;
        try {
            code = Integer.parseInt(status[1]);
        } catch (NumberFormatException e) {
            throw new IOException("not an HTTP status: " + lines[0]);
        }
        long length = -1;
        boolean chunked = false;
        for (int i = 1; i < lines.length; i++) {
            int colon = lines[i].indexOf(':');
            if (colon < 0) {
                continue;
            }
            String name = lines[i].substring(0, colon).trim().toLowerCase(Locale.ROOT);
            String value = lines[i].substring(colon + 1).trim();
            if (name.equals("content-length")) {
                length = Long.parseLong(value);
            } else if (name.equals("transfer-encoding") && value.toLowerCase(Locale.ROOT).contains("chunked")) {
                chunked = true;
            }
        }
        int start = end + 4;
        if (chunked) {
            return dechunk(code, raw, start, eof);
        }
        if (length >= 0) {
            if (raw.length - start < length) {
                if (eof) {
                    throw new IOException("berth's answer was cut short");
                }
                return null;
            }
            return new Response(code, new String(raw, start, (int) length, StandardCharsets.UTF_8));
        }
        return eof ? new Response(code, new String(raw, start, raw.length - start, StandardCharsets.UTF_8)) : null;
    }

    private static Response dechunk(int code, byte[] raw, int pos, boolean eof) throws IOException {
        ByteArrayOutputStream body = new ByteArrayOutputStream();
        byte[] crlf = "\r\n".getBytes(StandardCharsets.US_ASCII);
        while (true) {
            int eol = indexOf(raw, crlf, pos);
            if (eol < 0) {
                break;
            }
            String sizeText = new String(raw, pos, eol - pos, StandardCharsets.US_ASCII).split(";", 2)[0].trim();
            int size;
            try {
                size = Integer.parseInt(sizeText, 16);
            } catch (NumberFormatException e) {
                throw new IOException("bad chunk size from berth: " + sizeText);
            }
            if (size == 0) {
                return new Response(code, body.toString(StandardCharsets.UTF_8));
            }
            if (raw.length < eol + 2 + size + 2) {
                break;
            }
            body.write(raw, eol + 2, size);
            pos = eol + 2 + size + 2;
        }
        if (eof) {
            throw new IOException("berth's chunked answer was cut short");
        }
        return null;
    }

    private static int indexOf(byte[] hay, byte[] needle, int from) {
        outer:
        for (int i = from; i <= hay.length - needle.length; i++) {
            for (int j = 0; j < needle.length; j++) {
                if (hay[i + j] != needle[j]) {
                    continue outer;
                }
            }
            return i;
        }
        return -1;
    }
}

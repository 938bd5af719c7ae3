// A JVM program for the corpus, run with the OpenTelemetry Java agent (Maven Central), which
// exports the JVM's runtime metrics (jvm.memory.*, jvm.gc.duration) with no code of ours.
//   java -javaagent:opentelemetry-javaagent.jar Leak.java MODE START_S END_S MB_PER_MIN
// MODE leak: from START_S on, keeps MB_PER_MIN of new objects a minute (until END_S);
// MODE gcpressure: from START_S to END_S, holds a live set near the heap limit while it
// allocates, so the collector runs back to back; otherwise (and outside the window) it allocates
// and drops garbage at a steady pace;
// MODE ttl (a control, not a leak): from START_S on, keeps MB_PER_MIN a minute for TTL_S seconds
// (the fifth argument, default 180) and then drops it, as a session store or a cache with a
// time to live does. Such objects outlive a few young collections, so they are promoted and
// die in the old generation: it climbs between marking cycles with no leak at all.
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.List;

public class Leak {
    // Allocations land here so the JIT cannot drop them as dead (escape analysis would).
    static final byte[][] RING = new byte[256][];
    static int next;

    public static void main(String[] args) throws Exception {
        String mode = args[0];
        long t0 = System.nanoTime();
        double start = Double.parseDouble(args[1]), end = Double.parseDouble(args[2]);
        double mbPerMin = args.length > 3 ? Double.parseDouble(args[3]) : 0;
        List<byte[]> kept = new ArrayList<>();
        List<byte[]> pressure = new ArrayList<>();
        double ttl = args.length > 4 ? Double.parseDouble(args[4]) : 180;
        ArrayDeque<Object[]> sessions = new ArrayDeque<>();  // {born at (Double), bytes}
        long maxHeap = Runtime.getRuntime().maxMemory();
        while (true) {
            double t = (System.nanoTime() - t0) / 1e9;
            boolean on = t >= start && t < end;
            for (int i = 0; i < 2000; i++) {
                RING[next++ & 255] = new byte[1024];
            }
            if (mode.equals("leak") && on) {
                kept.add(new byte[(int) (mbPerMin * 1024 * 1024 / 60)]);
            }
            if (mode.equals("ttl") && on) {
                sessions.addLast(new Object[] {t, new byte[(int) (mbPerMin * 1024 * 1024 / 60)]});
                while ((Double) sessions.peekFirst()[0] < t - ttl) {
                    sessions.removeFirst();
                }
            }
            if (mode.equals("gcpressure")) {
                if (on) {
                    while (pressure.size() * 256L * 1024L < maxHeap * 0.55) {
                        pressure.add(new byte[256 * 1024]);
                    }
                    long until = System.nanoTime() + 400_000_000L;
                    while (System.nanoTime() < until) {
                        RING[next++ & 255] = new byte[64 * 1024];
                    }
                    Thread.sleep(600);
                    continue;
                }
                pressure.clear();
            }
            Thread.sleep(1000);
        }
    }
}

package dev.berth.storm;

import java.util.HashMap;
import java.util.Map;
import org.apache.storm.Config;
import org.apache.storm.StormSubmitter;
import org.apache.storm.spout.SpoutOutputCollector;
import org.apache.storm.task.TopologyContext;
import org.apache.storm.topology.BasicOutputCollector;
import org.apache.storm.topology.OutputFieldsDeclarer;
import org.apache.storm.topology.TopologyBuilder;
import org.apache.storm.topology.base.BaseBasicBolt;
import org.apache.storm.topology.base.BaseRichSpout;
import org.apache.storm.tuple.Fields;
import org.apache.storm.tuple.Tuple;
import org.apache.storm.tuple.Values;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A word count whose every tuple is acked, so that Storm counts acked tuples (the proof that a
 * cluster really processes). The spout emits at a bounded rate: the machine is shared, and what is
 * measured is recovery, not throughput.
 *
 * <p>Usage: {@code WordCountTopology NAME [WORKERS=2] [PARALLELISM=2]}; more settings through
 * {@code -c key=value} (storm.options): {@value #RATE} tuples per second (default 100).
 *
 * <p>The spout logs to its worker.log {@code BERTH-FIRST-ACK <epoch ms>} at its first ack,
 * {@code BERTH-ACK-RESUMED <epoch ms> <gap ms>} at an ack after two seconds without one, and
 * {@code BERTH-ACKED <epoch ms> <count>} for each second with acks: the bench reads when acking
 * started and resumed from them, without waiting for Storm's statistics, which reach Nimbus
 * seconds later.
 */
public final class WordCountTopology {
    public static final String RATE = "berth.wordcount.rate";

    private WordCountTopology() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 1 || args.length > 3) {
            System.err.println("usage: WordCountTopology NAME [WORKERS] [PARALLELISM]");
            System.exit(2);
        }
        int workers = args.length > 1 ? Integer.parseInt(args[1]) : 2;
        int parallelism = args.length > 2 ? Integer.parseInt(args[2]) : 2;
        TopologyBuilder builder = new TopologyBuilder();
        builder.setSpout("sentences", new SentenceSpout(), 1);
        builder.setBolt("split", new SplitBolt(), parallelism).shuffleGrouping("sentences");
        builder.setBolt("count", new CountBolt(), parallelism).fieldsGrouping("split", new Fields("word"));
        Config conf = new Config();
        conf.setNumWorkers(workers);
        conf.setMaxSpoutPending(500);
        conf.put(Config.TOPOLOGY_STATS_SAMPLE_RATE, 1.0d);  // exact acked counts, not a 5 % sample
        StormSubmitter.submitTopology(args[0], conf, builder.createTopology());
    }

    /** Emits sentences with message ids, so each tree of tuples is tracked and acked. */
    public static final class SentenceSpout extends BaseRichSpout {
        private static final Logger LOG = LoggerFactory.getLogger(SentenceSpout.class);
        private static final long GAP_MS = 2000;
        private static final String[] SENTENCES = {
            "the cow jumped over the moon",
            "an apple a day keeps the doctor away",
            "four score and seven years ago",
            "snow white and the seven dwarfs",
            "i am at two with nature",
        };
        private SpoutOutputCollector collector;
        private long rate;
        private long next;
        private long second;
        private long emittedThisSecond;
        private long ackedThisSecond;
        private long ackSecond;
        private long lastAckMs;
        private long failed;

        @Override
        public void open(Map<String, Object> conf, TopologyContext context, SpoutOutputCollector collector) {
            this.collector = collector;
            Object r = conf.get(RATE);
            this.rate = r == null ? 100 : Long.parseLong(r.toString());
        }

        @Override
        public void nextTuple() {
            long now = System.currentTimeMillis() / 1000;
            if (now != second) {
                second = now;
                emittedThisSecond = 0;
            }
            if (emittedThisSecond >= rate) {
                return;  // Storm's spout wait strategy sleeps when nothing was emitted
            }
            emittedThisSecond++;
            long id = next++;
            collector.emit(new Values(SENTENCES[(int) (id % SENTENCES.length)]), id);
        }

        @Override
        public void ack(Object msgId) {
            long nowMs = System.currentTimeMillis();
            if (lastAckMs == 0) {
                LOG.info("BERTH-FIRST-ACK {}", nowMs);
            } else if (nowMs - lastAckMs >= GAP_MS) {
                LOG.info("BERTH-ACK-RESUMED {} {}", nowMs, nowMs - lastAckMs);
            }
            lastAckMs = nowMs;
            long s = nowMs / 1000;
            if (s != ackSecond) {
                flushAcks();
                ackSecond = s;
            }
            ackedThisSecond++;
        }

        private void flushAcks() {
            if (ackedThisSecond > 0) {
                LOG.info("BERTH-ACKED {} {}", ackSecond * 1000, ackedThisSecond);
            }
            ackedThisSecond = 0;
        }

        @Override
        public void fail(Object msgId) {
            if (failed++ % 100 == 0) {  // a killed worker fails every pending tuple at once
                LOG.info("BERTH-FAILED {} {}", System.currentTimeMillis(), failed);
            }
        }

        @Override
        public void declareOutputFields(OutputFieldsDeclarer declarer) {
            declarer.declare(new Fields("sentence"));
        }
    }

    /** One sentence in, one tuple per word out, anchored (BaseBasicBolt anchors and acks). */
    public static final class SplitBolt extends BaseBasicBolt {
        @Override
        public void execute(Tuple input, BasicOutputCollector collector) {
            for (String word : input.getString(0).split(" ")) {
                collector.emit(new Values(word));
            }
        }

        @Override
        public void declareOutputFields(OutputFieldsDeclarer declarer) {
            declarer.declare(new Fields("word"));
        }
    }

    /** Counts words; the vocabulary is the spout's, so the map stays small. */
    public static final class CountBolt extends BaseBasicBolt {
        private final Map<String, Long> counts = new HashMap<>();

        @Override
        public void execute(Tuple input, BasicOutputCollector collector) {
            counts.merge(input.getString(0), 1L, Long::sum);
        }

        @Override
        public void declareOutputFields(OutputFieldsDeclarer declarer) {
        }
    }
}

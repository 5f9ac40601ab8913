import csv
import glob
import struct

from tensorboardX.proto.event_pb2 import Event

from common.logger import RunLogger


def read_events(run_dir):
    """The events of a TensorBoard file: TFRecords of (length, crc, Event bytes, crc)."""
    (path,) = glob.glob(f"{run_dir}/events.out.tfevents*")
    events, data = [], open(path, "rb").read()
    while data:
        (length,) = struct.unpack("<Q", data[:8])
        events.append(Event.FromString(data[12:12 + length]))
        data = data[12 + length + 4:]
    return events


def test_rows_reach_tensorboard_and_csv(tmp_path):
    logger = RunLogger(str(tmp_path), "run", {"learning_rate": 0.1, "env_id": "CartPole-v1"})
    logger.log(512, {"charts/episodic_return": 20.5, "losses/value_loss": 3})
    logger.log(1024, {"charts/SPS": 1000})
    logger.close()

    scalars = [(e.step, v.tag, v.simple_value) for e in read_events(tmp_path) for v in e.summary.value
               if v.HasField("simple_value")]
    assert scalars == [(512, "charts/episodic_return", 20.5), (512, "losses/value_loss", 3.0),
                       (1024, "charts/SPS", 1000.0)]
    texts = [v.tensor.string_val[0].decode() for e in read_events(tmp_path) for v in e.summary.value
             if v.tag.startswith("hyperparameters")]
    assert texts and "|learning_rate|0.1|" in texts[0]
    with open(tmp_path / "metrics.csv") as f:
        assert [(r["global_step"], r["metric"], r["value"]) for r in csv.DictReader(f)] == [
            ("512", "charts/episodic_return", "20.5"), ("512", "losses/value_loss", "3.0"),
            ("1024", "charts/SPS", "1000.0")]

"""The hardware flags and variables attacked (--cluster, --index, TF_CONFIG, --gpus): each mistake is one message
(exit status 2), found before TensorFlow starts. Numbers are ASCII digits of bounded length (Python's int() takes
'١٢' and fails on 5,000 digits), values of the wrong JSON type are refused rather than hashed."""

import json

import pytest
import yaml

from helpers import ktk_here
from toolkit.errors import UserError
from toolkit.hardware.cluster import parse_tf_config
from toolkit.hardware.gpus import Detected, Gpu, assign, visible_gpus


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": "sklearn.iris"}, "training": {"distribute": "multi_worker"}}))
    return path


@pytest.mark.parametrize("cluster, received", [
    ("a:" + "9" * 5000 + ",b:2", "a:999"),        # a port past int()'s digit limit
    ("a:１２,b:2", "a:１２"),                        # full-width digits
    ("a:٣,b:2", "a:٣"),                             # Arabic-Indic digits
    ("hôst:1,b:2", "hôst:1"),                       # a host name gRPC would not resolve (IDN: use xn--)
    ("a:1,b:65536", "65536"),
    ("a:1, ,b:2", "a:1, ,b:2"),
])
def test_cluster_addresses_are_ascii_host_port(config_file, cluster, received):
    done = ktk_here("run", config_file, "--role", "chief", "--cluster", cluster, "--index", "0")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "--cluster" in done.stderr and received in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("value, where", [
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": ["worker"], "index": 0}}', "TF_CONFIG.task.type"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": {"a": 1}, "index": 0}}', "TF_CONFIG.task.type"),
    ("[" * 100_000 + "]" * 100_000, "TF_CONFIG: not JSON"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}), "TF_CONFIG.task.index"),
])
def test_tf_config_of_any_shape_is_one_message(value, where):
    with pytest.raises(UserError, match=where.replace(".", r"\.")) as caught:
        parse_tf_config(value)
    assert len(str(caught.value)) < 1000


@pytest.mark.parametrize("gpus", ["²", "0,²", "٣", "9" * 5000, "-1", "1e2", ""])
def test_gpus_lists_are_ascii_indices(gpus):
    detected = Detected((Gpu(0, "H100", "GPU-a"), Gpu(1, "H100", "GPU-b")), "test")
    with pytest.raises(UserError, match="--gpus: expected GPU indices"):
        assign(detected, gpus=gpus)


def test_cuda_visible_devices_with_other_digits_ends_the_list_as_cuda_does():
    assert visible_gpus([("a", "GPU-1"), ("b", "GPU-2")], "²,1") == []


def test_cpu_devices_are_bounded_before_the_cpu_is_split():
    from toolkit.config import parse_config

    with pytest.raises(UserError, match=r"training\.distribute\.devices\.1: expected CPU:0 to CPU:63"):
        parse_config({"data": {"source": "sklearn.iris"},
                      "training": {"distribute": {"strategy": "mirrored", "devices": ["CPU:0", "CPU:9999"]}}})


@pytest.mark.slow
def test_mirrored_run_with_a_split_that_does_not_divide_across_devices_evaluates(tmp_path):
    """45 examples: the validation and test batches are odd, split [k+1, k] across two devices (Keras' evaluate
    failed there with TensorFlow's AddN error)."""
    from helpers import ktk

    config = tmp_path / "odd.yaml"
    config.write_text("name: odd\ndata: {source: synthetic.moons, options: {n_samples: 45}}\nmodel: {hidden: [4]}\n"
                      "training: {epochs: 1, batch_size: 8, distribute: {strategy: mirrored, devices: [CPU:0, CPU:1]}}\n")
    result = ktk("run", config, "--out", tmp_path / "run", "-q", cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()

"""The default node id: the host name, made unique on a distribution's default name."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon import config
from daemon.identity import default_node_id

MACHINE_A = "3d1219c7aa8f4ef0b1e0d6a5c4b3a291"
MACHINE_B = "9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e"


def machine_id(tmp_path: Path, value: str) -> tuple[Path, ...]:
    path = tmp_path / "machine-id"
    path.write_text(value + "\n")
    return (path,)


def test_a_chosen_host_name_is_the_node_id(tmp_path: Path):
    assert default_node_id("kitchen", machine_id(tmp_path, MACHINE_A)) == "kitchen"
    assert default_node_id("kitchen.lan", ()) == "kitchen"
    assert default_node_id("my pi!", ()) == "my-pi"


@pytest.mark.parametrize("host", ["raspberrypi", "RaspberryPi", "ubuntu", "nvidia-desktop", ""])
def test_a_default_host_name_gets_a_stable_suffix_of_its_own(tmp_path: Path, host: str):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = default_node_id(host, machine_id(tmp_path / "a", MACHINE_A))
    again = default_node_id(host, machine_id(tmp_path / "a", MACHINE_A))
    b = default_node_id(host, machine_id(tmp_path / "b", MACHINE_B))
    assert a == again != b  # stable on one board, different on another
    assert a.startswith((host or "node") + "-") and len(a.rsplit("-", 1)[1]) == 6
    assert MACHINE_A[:6] not in a  # derived from the machine id, not a piece of it
    config.parse({"node_id": a})  # a valid topic level


def test_without_a_machine_id_the_host_name_stands(tmp_path: Path):
    assert default_node_id("raspberrypi", (tmp_path / "absent",)) == "raspberrypi"
    assert default_node_id("raspberrypi", machine_id(tmp_path, "not-an-id")) == "raspberrypi"


def test_the_longest_host_name_still_makes_a_valid_id(tmp_path: Path):
    config.parse({"node_id": default_node_id("x" * 200, ())})

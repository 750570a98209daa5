"""The repository's contract with users: cluster.yaml stays private and token-authenticated, and the README's
two set-up commands are the ones the Makefile and CI run."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_keeps_the_dashboard_private_and_uses_token_auth():
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head, "dashboard must listen on loopback (reach it via `ray dashboard`)"
    assert "0.0.0.0" not in yaml.safe_dump(cfg)
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        starts = [c for c in cmds if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts)
    ssh = cfg["provider"]["security_group"]["IpPermissions"]
    assert [p["FromPort"] for p in ssh] == [22], "only SSH is opened"
    assert all(r["CidrIp"] != "0.0.0.0/0" for p in ssh for r in p["IpRanges"])
    assert cfg["available_node_types"]["head_cpu"]["resources"] == {"CPU": 0}
    text = (REPO / "cluster.yaml").read_text().lower()
    assert not re.search(r"(secret_access_key|aws_access_key_id|password)\s*:", text), "no secrets in configs"


def test_readme_two_commands_match_makefile_and_ci():
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo: .*\n\t\$\(BIN\)/dr-ray demo --config configs/demo.yaml$", makefile, re.M)
    assert re.search(r"^test: .*\n\t\$\(BIN\)/python -m pytest", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()

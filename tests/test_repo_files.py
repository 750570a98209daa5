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
    assert cfg["available_node_types"]["head_cpu"]["resources"] == {"CPU": 0}
    text = (REPO / "cluster.yaml").read_text().lower()
    assert not re.search(r"(secret_access_key|aws_access_key_id|password)\s*:", text), "no secrets in configs"


def test_cluster_yaml_uses_pre_created_security_groups_and_opens_nothing_to_the_world():
    # Ray's AWS launcher adds SSH from 0.0.0.0/0 to every group it creates (ray/autoscaler/_private/aws/config.py,
    # _create_default_ssh_inbound_rules), whatever provider.security_group.IpPermissions says; it creates one for
    # any node type whose node_config lacks SecurityGroupIds.
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    node_types = cfg["available_node_types"]
    assert node_types, "cluster.yaml defines no node types"
    for name, node_type in node_types.items():
        groups = node_type["node_config"].get("SecurityGroupIds")
        assert groups and all(isinstance(g, str) and g.startswith("sg-") for g in groups), \
            f"node type {name}: node_config needs SecurityGroupIds (a pre-created group), got {groups!r}"
    rules = cfg["provider"].get("security_group", {}).get("IpPermissions", [])
    world = [r for rule in rules for r in [*rule.get("IpRanges", []), *rule.get("Ipv6Ranges", [])]
             if r.get("CidrIp") == "0.0.0.0/0" or r.get("CidrIpv6") == "::/0"]
    assert not world, f"an IpPermissions rule opens a port to the whole internet: {world}"


def test_readme_two_commands_match_makefile_and_ci():
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo: .*\n\t\$\(BIN\)/dr-ray demo --config configs/demo.yaml$", makefile, re.M)
    assert re.search(r"^test: .*\n\t\$\(BIN\)/python -m pytest", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()

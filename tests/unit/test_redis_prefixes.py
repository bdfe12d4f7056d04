"""Another gateway cluster on the same Redis under a prefix like this one's."""

from __future__ import annotations

from studios_gateway.registry.redis_prefixes import near, other_clusters_lines


def test_a_typo_of_the_prefix_is_near_and_another_name_is_not() -> None:
    for ours, theirs in [("studios", "studios:"), ("connect:session", "connect:session:"),
                         ("connect:session", "Connect:Session"), ("connect:session",
                         "connect-session"), ("studios", "studio"), ("studios", "studois"),
                         ("connect:session", "conect:session")]:
        assert near(ours, theirs) and near(theirs, ours), (ours, theirs)
    for ours, theirs in [("studios", "studios"), ("staging", "production"),
                         ("cluster-a", "cluster-b"),  # a changed character: on purpose
                         ("gw1", "gw12"), ("gw1", "gw2"),  # short names
                         # numbered clusters: a second one named with a digit added
                         ("studios", "studios2"), ("tenant1", "tenant10"),
                         ("gw-prod", "gw-prod2"),
                         ("connect:session", "connect:staging")]:
        assert not near(ours, theirs), (ours, theirs)


def test_a_near_prefix_is_warned_naming_both_and_others_are_said_at_info() -> None:
    lines = other_clusters_lines("studios", ["staging", "studios", "studios:"])
    assert [level for level, _ in lines] == ["warn", "info"]
    warning = lines[0][1]
    assert "CONNECT_REDIS_PREFIX 'studios:'" in warning and "this node's is 'studios'" in warning
    assert "Studio not connected" in warning
    assert "'staging'" in lines[1][1] and "studios:" not in lines[1][1]
    assert other_clusters_lines("studios", ["studios"]) == []  # only its own cluster

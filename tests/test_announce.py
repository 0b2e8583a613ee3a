"""What a run says before it trains: the data's label, and attention depths that kappa/upsilon did not decide."""

from __future__ import annotations

from aacn.models import create_model
from aacn.train.progress import depth_overrides, describe_data


def test_a_minimum_key_depth_that_overrides_kappa_is_named():
    layers = create_model("wrn-16-2", attention="seed", base_width=4).attention_layers  # F_out 32, Nh 8
    line = depth_overrides(layers, 0.2, 0.1)
    assert line.startswith("attention depths set by the per-head minimums") and "--min-key-depth-per-head" in line
    assert "block3.0.conv1 dk=160 (asked 6.4 = 0.2 x 32)" in line
    kappa_decides = create_model("wrn-16-2", attention="paper", num_heads=1, min_key_depth_per_head=4)
    assert depth_overrides(kappa_decides.attention_layers, 0.2, 0.1) is None
    assert depth_overrides([], 0.2, 0.1) is None


def test_the_data_label_in_one_line():
    assert describe_data({"label": "official", "differing_files": []}).startswith("official files")
    line = describe_data({"label": "not official", "differing_files": ["a", "b", "c", "d"]})
    assert line.startswith("not official: 4 file(s) differ") and "(a, b, c, ...)" in line
    assert describe_data(None).startswith("data of unknown origin")

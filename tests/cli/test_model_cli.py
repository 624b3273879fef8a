import yaml
from click.testing import CliRunner

from retinadet.cli import main
from retinadet.model.presets import PRESETS


def test_presets_lists_every_preset():
    result = CliRunner().invoke(main, ["model", "presets"])
    assert result.exit_code == 0, result.output
    for name in PRESETS:
        assert name in result.output


def test_show_prints_a_loadable_config_with_overrides():
    result = CliRunner().invoke(main, ["model", "show", "retinanet_resnet50_fpn_v2", "--set", "backbone.name=resnet34"])
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.output)
    assert cfg["head"]["norm"] == "gn" and cfg["fpn"]["p6_input"] == "c5" and cfg["backbone"]["name"] == "resnet34"


def test_unknown_preset_is_one_clear_line():
    result = CliRunner().invoke(main, ["model", "show", "retinanet_resnet50_fnp"])
    assert result.exit_code == 2
    assert "unknown preset" in result.output and "retinanet_resnet50_fpn" in result.output
    assert "Traceback" not in result.output


def test_backbone_listing():
    result = CliRunner().invoke(main, ["model", "backbones", "--filter", "convnext*"])
    assert result.exit_code == 0 and "convnext_tiny" in result.output
    result = CliRunner().invoke(main, ["model", "backbones", "--timm", "--filter", "resnet18*"])
    assert "timm:resnet18" in result.output


def test_summary_reports_channels_and_levels():
    result = CliRunner().invoke(main, ["model", "summary", "fast", "--imgsz", "256"])
    assert result.exit_code == 0, result.output
    assert "out_channels [32, 64, 128]" in result.output  # the quarter-width ResNet-18
    lines = {line.split()[0]: line.split() for line in result.output.splitlines() if line[:1] in "CP" and line[1:2].isdigit()}
    assert lines["C3"][3] == "32x32" and lines["P7"][3] == "2x2"
    assert int(lines["P3"][4]) == 32 * 32 * 9

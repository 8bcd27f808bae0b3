"""Prompt profiles (METHOD.md §2): bundled profiles, class-name mapping, negatives, and the clear errors."""

from __future__ import annotations

import pytest

from clipce_rtdetr.errors import ClipCEError
from clipce_rtdetr.method.prompts import available_profiles, build_prompts, check_templates, load_profile

RTTS = ["person", "bicycle", "car", "motorbike", "bus"]


def test_bundled_profiles():
    assert {"haze", "lowlight", "underwater"} <= set(available_profiles())
    haze = load_profile("haze")
    assert haze.templates == ["a photo of a {}."]
    assert haze.negatives == ["a photo of fog.", "a photo of haze.", "a photo of the background."]
    assert load_profile("lowlight").negatives == ["a photo of darkness.", "a photo of the background."]
    assert load_profile("underwater").negatives == ["a photo of murky water.", "a photo of the sea floor."]
    assert haze.classes is None


def test_build_prompts_rtts():
    ps = build_prompts("haze", dict(enumerate(RTTS)))
    assert ps.names == RTTS
    assert ps.prompt_names == ["person", "bicycle", "car", "motorcycle", "bus"]
    assert ps.positives[3] == ["a photo of a motorcycle."]
    assert ps.negatives(0) == [
        "a photo of a bicycle.",
        "a photo of a car.",
        "a photo of a motorcycle.",
        "a photo of a bus.",
        "a photo of fog.",
        "a photo of haze.",
        "a photo of the background.",
    ]
    d = ps.to_dict()
    assert d["classes"][4]["negative"][-3:] == ["a photo of fog.", "a photo of haze.", "a photo of the background."]
    assert "a photo of a bus." not in d["classes"][4]["negative"]


def test_templates_override_aliases_and_underscores():
    ps = build_prompts("lowlight", ["People", "traffic_light"], templates=["a photo of a {}.", "a dark photo of a {}."])
    assert ps.prompt_names == ["person", "traffic light"]  # case-insensitive alias, '_' read as a space
    assert ps.positives[0] == ["a photo of a person.", "a dark photo of a person."]
    assert ps.negatives(0)[:2] == ["a photo of a traffic light.", "a dark photo of a traffic light."]
    ps = build_prompts("underwater", ["echinus", "fish"])
    assert ps.positives[0] == ["a photo of a sea urchin."]


def test_user_profile_with_classes(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text(
        "templates: ['a hazy photo of a {}.']\nnegatives: ['a photo of smoke.']\n"
        "classes:\n  car: automobile\n  bus: bus\n"
    )
    ps = build_prompts(str(f), ["car", "bus"])
    assert ps.positives == [["a hazy photo of a automobile."], ["a hazy photo of a bus."]]
    assert ps.negatives(1) == ["a hazy photo of a automobile.", "a photo of smoke."]
    with pytest.raises(ClipCEError, match=r"no entry for dataset class\(es\) person"):
        build_prompts(str(f), ["car", "bus", "person"])


def test_unknown_profile_lists_available():
    with pytest.raises(ClipCEError, match="haze, lowlight, rain, snow, underwater"):
        load_profile("smog")


def test_template_without_braces(tmp_path):
    with pytest.raises(ClipCEError, match="exactly one"):
        build_prompts("haze", ["car"], templates=["a photo of a car."])
    with pytest.raises(ClipCEError, match="exactly one"):
        check_templates(["{} and {}"])
    f = tmp_path / "bad.yaml"
    f.write_text("templates: ['a photo']\n")
    with pytest.raises(ClipCEError, match="bad.yaml.*exactly one"):
        load_profile(f)


def test_malformed_yaml_names_file_and_line(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("templates:\n  - 'a photo of a {}.'\nnegatives: [unclosed\n  - x\n")
    with pytest.raises(ClipCEError, match=r"broken\.yaml:\d+:\d+: malformed YAML"):
        load_profile(f)


def test_bad_keys_and_types(tmp_path):
    f = tmp_path / "k.yaml"
    f.write_text("negativs: ['a photo of fog.']\n")
    with pytest.raises(ClipCEError, match="unknown key.*negativs"):
        load_profile(f)
    f.write_text("negatives: 3\n")
    with pytest.raises(ClipCEError, match="list of non-empty strings"):
        load_profile(f)
    f.write_text("- a\n- b\n")
    with pytest.raises(ClipCEError, match="mapping"):
        load_profile(f)
    with pytest.raises(ClipCEError, match="no class names"):
        build_prompts("haze", [])

"""The config system: typed YAML, dotted overrides, errors that name the key and the file."""

import pytest

from ovdet.config import Config, LoaderConfig, load_config, to_yaml
from ovdet.errors import OvdetError
from ovdet.losses.registry import default_weights
from ovdet.recipes import RECIPES


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_values_reach_typed_fields(tmp_path):
    path = write(tmp_path, "train:\n  steps: 7\n  lr: 1\nloader:\n  prompt_templates: ['{}']\n")
    cfg = load_config(path)
    assert cfg.train.steps == 7
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.loader.prompt_templates == ["{}"]
    assert cfg.model.name == Config().model.name


def test_dotted_overrides_parse_yaml_values(tmp_path):
    path = write(tmp_path, "train:\n  steps: 7\n")
    cfg = load_config(path, ["train.steps=9", "loader.shard_dirs=[a, b]", "model.freeze_text=false"])
    assert cfg.train.steps == 9
    assert cfg.loader.shard_dirs == ["a", "b"]
    assert cfg.model.freeze_text is False


def test_override_into_a_list_of_sources(tmp_path):
    path = write(tmp_path, "data:\n  sources:\n    - {name: a, kind: detection, format: coco, paths: [x.json]}\n")
    cfg = load_config(path, ["data.sources.0.weight=3"])
    assert cfg.data.sources[0].weight == 3.0


def test_one_loss_weight_updates_the_defaults_instead_of_replacing_them(tmp_path):
    path = write(tmp_path, "loss:\n  weights: {loss_giou: 3}\n")
    cfg = load_config(path, ["loss.weights.loss_image=0.1"])
    assert cfg.loss.weights == {**Config().loss.weights, "loss_giou": 3.0, "loss_image": 0.1}


def test_unknown_loss_weight_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, "train:\n  steps: 3\n")
    with pytest.raises(OvdetError, match=r"cfg\.yaml: unknown key 'loss\.weights\.loss_imge' \(known: loss_labels"):
        load_config(path, ["loss.weights.loss_imge=0.1"])


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, "train:\n  stepz: 3\n")
    with pytest.raises(OvdetError, match=r"cfg\.yaml: unknown key 'train\.stepz'"):
        load_config(path)


def test_wrong_type_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, "train:\n  steps: many\n")
    with pytest.raises(OvdetError, match=r"cfg\.yaml: key 'train\.steps' must be an integer, got 'many'"):
        load_config(path)


def test_bool_is_not_accepted_as_a_number(tmp_path):
    with pytest.raises(OvdetError, match="train.lr"):
        load_config(write(tmp_path, "train:\n  lr: true\n"))


def test_exponent_numbers_without_a_dot_are_numbers_in_files_and_overrides(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-5 as a string; for a float field it is the number users mean
    cfg = load_config(write(tmp_path, "train:\n  lr: 1e-5\n"), ["loss.focal_alpha=2.5E-1"])
    assert cfg.train.lr == 1e-5 and cfg.loss.focal_alpha == 0.25
    with pytest.raises(OvdetError, match=r"train\.lr' must be a number, got '1e-5x'"):
        load_config(write(tmp_path, "train:\n  lr: 1e-5x\n"))


def test_literal_fields_reject_other_values(tmp_path):
    with pytest.raises(OvdetError, match=r"loss\.classification' must be one of \['focal', 'bce', 'softmax'\]"):
        load_config(write(tmp_path, "loss:\n  classification: sigmoid\n"))


def test_missing_file_and_invalid_yaml_are_user_errors(tmp_path):
    with pytest.raises(OvdetError, match="nope.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(OvdetError, match=r"bad\.yaml:3: invalid YAML"):
        load_config(write(tmp_path, "train:\n  steps: [1,\n", "bad.yaml"))


def test_bad_override_syntax_is_a_user_error():
    with pytest.raises(OvdetError, match="expected key.sub=value"):
        load_config(None, ["train.steps"])


def test_sub_config_loads_alone(tmp_path):
    cfg = load_config(write(tmp_path, "batch_size: 3\n"), cls=LoaderConfig)
    assert cfg.batch_size == 3


def test_printed_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.steps=5"])
    again = load_config(write(tmp_path, to_yaml(cfg)))
    assert again == cfg


def test_loss_weights_default_to_the_registry_and_accept_only_its_names():
    assert load_config(None).loss.weights == default_weights()
    assert list(default_weights())[:3] == ["loss_labels", "loss_l1", "loss_smooth_l1"]
    with pytest.raises(OvdetError, match=r"unknown key 'loss\.weights\.loss_focal' \(known: loss_labels, loss_l1"):
        load_config(None, ["loss.weights.loss_focal=1"])


def test_the_renamed_loss_bbox_weight_is_refused_with_its_new_name():
    with pytest.raises(OvdetError, match=r"key 'loss\.weights\.loss_bbox' was removed: renamed loss\.weights\.loss_l1"):
        load_config(None, ["loss.weights.loss_bbox=5"])


def test_the_removed_contrastive_temperature_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("loss:\n  contrastive_temperature: 0.1\n")
    with pytest.raises(OvdetError, match=r"cfg\.yaml: key 'loss\.contrastive_temperature' was removed: it never had"):
        load_config(path)
    with pytest.raises(OvdetError, match="contrastive_temperature' was removed"):
        load_config(None, ["loss.contrastive_temperature=0.07"])


def test_the_removed_objectness_key_points_to_model_quality(tmp_path):
    with pytest.raises(OvdetError, match=r"cfg\.yaml: key 'model\.objectness' was removed: use model\.quality=objectness"):
        load_config(write(tmp_path, "model:\n  objectness: true\n"))
    assert load_config(None, ["model.quality=objectness"]).model.quality == "objectness"


def test_a_saved_model_spec_with_objectness_is_refused():
    from ovdet.models.factory import create_detector

    with pytest.raises(OvdetError, match="objectness: true: its objectness head was never trained"):
        create_detector({"kind": "custom", "name": "hand-written", "objectness": True})


@pytest.mark.parametrize("override, message", [
    ("loss.max_iou_negative=0.6", r"loss\.max_iou_negative=0\.6 and loss\.max_iou_positive=0\.5: need 0 <= negative"),
    ("loss.atss_topk=0", r"loss\.atss_topk=0: must be at least 1"),
    ("loss.prior_scale=0", r"loss\.prior_scale=0(\.0)?: must be positive"),
    ("model.reg_max=1", r"model\.reg_max=1: DFL needs at least 2 bins"),
    ("eval.nms_iou=0", r"eval\.nms_iou=0(\.0)?: an IoU threshold in \(0, 1\]"),
    ("eval.nms=fast", r"eval\.nms.*one of \['auto', 'none', 'class'"),
    ("loss.assigner=yolo", r"loss\.assigner.*one of \['hungarian', 'max_iou', 'atss', 'tal', 'simota'\]"),
    ("train.collective_timeout_s=0", r"train\.collective_timeout_s=0(\.0)?: must be positive seconds"),
    ("train.shared_folder_wait_s=-1", r"train\.shared_folder_wait_s=-1(\.0)?: must be >= 0 seconds"),
])
def test_invalid_recipe_values_are_refused_naming_the_key(override, message):
    with pytest.raises(OvdetError, match=message):
        load_config(None, [override])


def test_a_config_file_that_is_not_a_mapping_names_the_file(tmp_path):
    with pytest.raises(OvdetError, match=r"list\.yaml: expected a YAML dict at the top level, got list"):
        load_config(write(tmp_path, "- 1\n- 2\n", "list.yaml"))
    assert load_config(write(tmp_path, "", "empty.yaml")) == Config()


RECIPE_KEYS = ("loss.assigner", "loss.classification", "model.box_head", "model.quality", "loader.mosaic_probability",
               "loss.weights.loss_labels", "loss.weights.loss_l1", "loss.weights.loss_giou", "loss.weights.loss_ciou")


def setting(cfg: Config, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def test_a_recipe_fills_in_its_settings(tmp_path):
    cfg = load_config(write(tmp_path, "recipe: yolo-world\n"))
    assert (cfg.loss.assigner, cfg.loss.classification, cfg.model.box_head) == ("tal", "bce", "dfl")
    assert cfg.loader.mosaic_probability == 1.0
    assert {k: cfg.loss.weights[k] for k in ("loss_labels", "loss_l1", "loss_giou", "loss_ciou")} == {
        "loss_labels": 0.5, "loss_l1": 0.0, "loss_giou": 0.0, "loss_ciou": 7.5}
    assert cfg.loss.weights["loss_contrastive"] == default_weights()["loss_contrastive"]  # not a recipe key
    glip = load_config(None, ["recipe=glip"])
    assert (glip.loss.assigner, glip.model.quality, glip.loss.weights["loss_l1"]) == ("atss", "centerness", 0.0)


def test_the_owl_recipe_is_the_defaults_and_every_recipe_sets_the_same_keys():
    defaults = Config()
    assert all(setting(load_config(None, ["recipe=owl"]), k) == setting(defaults, k) for k in RECIPE_KEYS)
    alone = {name: load_config(None, [f"recipe={name}"]) for name in RECIPES}
    for name in RECIPES:  # so switching recipe never leaves another recipe's setting behind
        for other in RECIPES:
            switched = load_config(None, [f"recipe={name}", f"recipe={other}"])
            assert all(setting(switched, k) == setting(alone[other], k) for k in RECIPE_KEYS)
    assert {name: sorted(recipe) for name, recipe in RECIPES.items()} == {name: ["loader", "loss", "model"] for name in RECIPES}
    assert len({str(sorted(r["loss"]["weights"])) for r in RECIPES.values()}) == 1


def test_the_config_own_keys_win_over_its_recipe(tmp_path):
    path = write(tmp_path, "recipe: yolo-world\nloss:\n  weights: {loss_ciou: 5}\nloader:\n  mosaic_probability: 0.5\n")
    cfg = load_config(path, ["loss.assigner=atss"])
    assert (cfg.loss.assigner, cfg.loss.weights["loss_ciou"], cfg.loader.mosaic_probability) == ("atss", 5.0, 0.5)
    assert (cfg.model.box_head, cfg.loss.weights["loss_labels"]) == ("dfl", 0.5)  # the rest from the recipe
    # an override of the recipe switches it, under the file's own keys
    owl = load_config(path, ["recipe=owl"])
    assert (owl.loss.assigner, owl.model.box_head, owl.loss.weights["loss_ciou"]) == ("hungarian", "direct", 5.0)


def test_an_unknown_recipe_names_it_the_file_and_the_known_ones(tmp_path):
    path = write(tmp_path, "recipe: yolo\n")
    with pytest.raises(OvdetError, match=r"cfg.yaml: recipe='yolo' is not a recipe \(known: owl, glip, yolo-world\)"):
        load_config(path)
    assert load_config(None, ["recipe="]).loss.assigner == "hungarian"  # empty: none, the defaults


def test_the_demo_trains_the_recipe_its_table_chose(tmp_path):
    """docs/recipes.md moved the demo to YOLO-World's recipe (AP HM 0.648 against OWL's 0.534)."""
    demo = load_config("configs/demo.yaml")
    assert demo.recipe == "yolo-world"
    assert (demo.loss.assigner, demo.model.box_head, demo.loader.mosaic_probability) == ("tal", "dfl", 1.0)
    # the printed config (the recipe plus its settings) loads back to itself
    assert load_config(write(tmp_path, to_yaml(demo), "printed.yaml")) == demo

"""The model card (``README.md``) of a trained folder: Hub metadata plus a page a reader can check.

The YAML front matter is ``huggingface_hub``'s :class:`ModelCardData` with one ``EvalResult``
per metric and split (the Hub shows them as the model's results); the page says which paper
and recipe the model follows, what data and split it saw, how it was evaluated, its metrics and
how to load it. When ``config.json`` records each metrics part's ranking protocol (``protocols``;
``zoo.train`` does), every number is labelled with it: full ranking, or 1 + N sampled candidates.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import yaml

LIBRARY_LICENSE = "apache-2.0"  # pyproject.toml's
SPLIT_NAMES = {"valid": "validation", "test": "test"}
SPLIT_SHORT = {"loo": "leave-one-out by time", "ratio": "ratio by time"}
SPLIT_PROTOCOLS = {
    "loo": "leave-one-out by time: per user the last interaction is the test target, the second-to-last the "
    "validation target, the rest is training data",
    "ratio": "ratio by time: a global time cut into training, validation and test interactions",
}


def protocol_label(protocol: Mapping[str, Any]) -> str:
    """A ranking protocol in a few words: ``"full ranking"`` or ``"1 + 100 sampled"``."""
    return "full ranking" if protocol["mode"] == "full" else f"1 + {protocol['num_negatives']} sampled"


def _ranking_sentence(protocol: Mapping[str, Any]) -> str:
    if protocol["mode"] == "full":
        return "each target is ranked among all items"
    seed = protocol.get("seed")
    return (f"each target is ranked among itself and {protocol['num_negatives']} items drawn uniformly without "
            "replacement from the items outside its history and the target"
            + ("" if seed is None else f" (seed {seed}, drawn once)"))


def _part_split(part: str, protocols: Mapping[str, Any]) -> str:
    """The split a metrics part was measured on (``valid`` / ``test``)."""
    return protocols[part]["split"] if part in protocols else part


def _column(part: str, protocols: Mapping[str, Any]) -> str:
    """A metrics part as a heading: its split and, when recorded, its ranking protocol."""
    split = SPLIT_NAMES.get(_part_split(part, protocols), part)
    return f"{split} ({protocol_label(protocols[part])})" if part in protocols else split


def _metric_config(split_protocol: str | None, part: str, protocols: Mapping[str, Any]) -> str | None:
    """The Hub's ``metric_config`` of a metrics part: the split and, when recorded, the ranking protocol."""
    pieces = [split_protocol, protocol_label(protocols[part]) if part in protocols else None]
    return "; ".join(p for p in pieces if p) or None


def _license(facts: Mapping[str, Any], card: Mapping[str, Any]) -> dict[str, str]:
    """The Hub's license fields: ``card["license"]`` when given, else the built-in dataset's terms
    (MovieLens: ``other``, with a name and a link), else the library's own license (Apache-2.0)."""
    from zoo.data.builtin import DATASET_TERMS

    if card.get("license"):
        return {"license": str(card["license"])}
    terms = DATASET_TERMS.get(str(facts.get("name")))
    if terms is None:
        return {"license": LIBRARY_LICENSE}
    return {key: terms[key] for key in ("license", "license_name", "license_link")}


def _license_text(facts: Mapping[str, Any], card: Mapping[str, Any]) -> str:
    """The card's license paragraph, saying where the license in the front matter comes from."""
    from zoo.data.builtin import DATASET_TERMS

    fields = _license(facts, card)
    if card.get("license"):
        return f"License: {fields['license']} (set by whoever trained the model)."
    terms = DATASET_TERMS.get(str(facts.get("name")))
    if terms is not None:
        return (f"License: the terms of the training data, {fields['license_name']} ({fields['license_link']}): "
                f"{terms['summary']}. The library that built the model is under {LIBRARY_LICENSE}.")
    return (f"License: {LIBRARY_LICENSE}, the library's license, by default; the terms of the data the model was "
            "trained on may restrict its use. Set another with `card={'license': ...}`.")


def _metadata(config: dict[str, Any], card: dict[str, Any]) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    recipe, facts = config["recipe"], config["dataset"]
    protocols = config.get("protocols") or {}
    dataset = str(facts.get("name", "unknown"))
    method = (facts.get("split") or {}).get("method")
    split_protocol = SPLIT_SHORT.get(method, method)
    results = [
        EvalResult(
            task_type="sequential-recommendation",
            task_name="Next-item recommendation",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=SPLIT_NAMES.get(_part_split(part, protocols), part),
            metric_type=metric.lower(),
            metric_name=metric.upper() + (f" ({protocol_label(protocols[part])})" if part in protocols else ""),
            metric_value=round(value, 6),
            metric_config=_metric_config(split_protocol, part, protocols),
        )
        for part, table in config["metrics"].items()
        for metric, value in table.items()
    ]
    data = ModelCardData(
        library_name=config["library_name"],
        **_license(facts, card),
        tags=["sequential-recommendation", "safetensors", recipe["name"], *card.get("tags", [])],
        datasets=[dataset] if facts.get("name") else None,
        model_name=card.get("model_name", f"{recipe['name']}-{dataset}"),
        eval_results=results or None,
        ignore_metadata_errors=False,
    )
    return data.to_yaml()


def _protocol(facts: dict[str, Any], card: dict[str, Any], protocols: Mapping[str, Any]) -> str:
    if "protocol" in card:
        return str(card["protocol"])
    method = (facts.get("split") or {}).get("method")
    split = SPLIT_PROTOCOLS.get(method, f"split {method!r}" if method else "split not recorded")
    if not protocols:
        return f"{split}; ranking as evaluated by zoo.evaluate (full ranking over all items unless noted)"
    columns: dict[str, list[str]] = {}
    for part, protocol in protocols.items():
        columns.setdefault(_ranking_sentence(protocol), []).append(_column(part, protocols))
    return f"{split}. Ranking: " + "; ".join(f"{', '.join(names)}: {sentence}" for sentence, names in columns.items())


def _fact_rows(facts: dict[str, Any]) -> list[str]:
    rows = []
    for key, value in facts.items():
        if key == "item_vocabulary":
            rows.append(f"| item vocabulary | {len(value['raw_ids'])} raw ids in index order (index 0 = padding) |")
            continue
        shown = value if isinstance(value, (str, int, float, bool)) or value is None else json.dumps(value, sort_keys=True)
        rows.append(f"| {key} | {str(shown).replace('|', '/')} |")
    return rows


def _metrics_table(metrics: dict[str, dict[str, float]], protocols: Mapping[str, Any]) -> list[str]:
    if not metrics:
        return ["No metrics were recorded with this model."]
    parts = list(metrics)
    names = list(dict.fromkeys(m for table in metrics.values() for m in table))
    lines = ["| metric | " + " | ".join(_column(p, protocols) for p in parts) + " |", "|---" * (len(parts) + 1) + "|"]
    for name in names:
        cells = [f"{metrics[p][name]:.4f}" if name in metrics[p] else "" for p in parts]
        lines.append(f"| {name.upper()} | " + " | ".join(cells) + " |")
    return lines


def render_model_card(config: dict[str, Any], card: dict[str, Any] | None = None) -> str:
    """``README.md`` text for a ``config.json`` (see :func:`zoo.hub.build_config`).

    ``card`` may add ``license``, ``tags``, ``model_name``, ``protocol`` (replaces the derived
    evaluation protocol), ``notes`` (a paragraph) and ``citation`` (BibTeX).
    """
    card = dict(card or {})
    unknown = set(card) - {"license", "tags", "model_name", "protocol", "notes", "citation"}
    if unknown:
        raise ValueError(f"unknown model card fields {sorted(unknown)}; allowed: license, tags, model_name, protocol, notes, citation")
    recipe, facts = config["recipe"], config["dataset"]
    dataset = facts.get("name", "an unnamed dataset")
    lines = ["---", _metadata(config, card).rstrip(), "---", "", f"# {recipe['name']} trained on {dataset}", ""]
    if recipe.get("description"):
        lines += [" ".join(recipe["description"].split()), ""]
    if card.get("notes"):
        lines += [str(card["notes"]), ""]
    lines += ["## Model", "", f"- Paper: {recipe.get('paper') or 'none (a zoo recipe)'}",
              f"- Recipe `{recipe['name']}`, fidelity: {recipe.get('fidelity')}",
              f"- Items: {config['num_items']}; embedding size {recipe.get('d_model')}; max length {recipe.get('max_len')}",
              f"- Library: {config['library_name']} {config['library_version']}"]
    for deviation in recipe.get("deviations") or []:
        lines.append(f"- Deviation: {' '.join(str(deviation).split())}")
    lines += ["", "## Recipe", "", "The fully resolved recipe (also in `config.json`):", "", "```yaml",
              yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", "",
              "## Data", "", "| fact | value |", "|---|---|", *_fact_rows(facts), "",
              "## Evaluation protocol", "", _protocol(facts, card, config.get("protocols") or {}) + ".", "",
              "## Metrics", "", *_metrics_table(config["metrics"], config.get("protocols") or {}), "",
              "## How to load", "", "```python", "import zoo", "",
              'model = zoo.create("local-dir:PATH/TO/THIS/FOLDER")  # or "hf-hub:ORG/NAME"',
              'top = model.recommend([["RAW_ID_1", "RAW_ID_2"]], k=10)  # raw item ids, oldest first',
              "print(top.ids[0])  # the 10 best items' raw ids (top.items: their indices)", "```", "",
              "Weights are `model.safetensors` (no pickle); the recipe, item vocabulary and metrics are in `config.json`.", ""]
    lines += ["## License", "", _license_text(facts, card), ""]
    if card.get("citation"):
        lines += ["## Citation", "", "```bibtex", str(card["citation"]).strip(), "```", ""]
    return "\n".join(lines)

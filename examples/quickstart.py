"""Quickstart: recommend with a pretrained model, then train SASRec on MovieLens-100k yourself.

Run: .venv/bin/python examples/quickstart.py [EPOCHS]   (default 3 epochs, well under a minute on 2 cores)
"""

import sys

import zoo
from zoo.data import load_dataset
from zoo.train import train

titles = load_dataset("ml-100k").item_features.text
histories = {  # raw MovieLens ids, oldest first
    "Star Wars, Empire Strikes Back, Return of the Jedi": ["50", "172", "181"],
    "Toy Story, Aladdin, Lion King": ["1", "95", "71"],
}


def show(model: zoo.SeqRecModel, name: str) -> None:
    """The top 5 unseen items after each history, with their titles."""
    for label, raw_history in histories.items():
        top = model.recommend([raw_history], k=5, exclude_seen=True)  # raw ids in, raw ids out (top.ids)
        print(f"\n{name}, after {label}:")
        for index, raw_id in zip(top.items[0].tolist(), top.ids[0]):
            print(f"  {raw_id:>5}  {titles[index]}")


# 1. A pretrained model, shipped with the package (no download, no training).
show(zoo.create("mamba4rec", pretrained=True), "mamba4rec.ml-100k")

# 2. Train your own: leave-one-out split by time, early stopping on validation NDCG@10, best weights kept.
epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
out = "runs/quickstart"
result = train("sasrec", "ml-100k", out, epochs=epochs, seed=0, resume=False, progress=False)
print(f"\n{result.epochs_run} epochs; test HR@10 {result.test['hr@10']:.4f}, NDCG@10 {result.test['ndcg@10']:.4f}")

# 3. Load the trained folder (Hugging Face Hub layout: config.json, model.safetensors, README.md).
show(zoo.create(f"local-dir:{out}"), "your sasrec")

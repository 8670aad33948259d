"""Quickstart: train SASRec on MovieLens-100k for a few epochs, then recommend from raw item ids.

Run: .venv/bin/python examples/quickstart.py [EPOCHS]   (default 3 epochs, well under a minute on 2 cores)
"""

import sys

import zoo
from zoo.data import load_dataset
from zoo.train import train

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
out = "runs/quickstart"

# 1. Train: leave-one-out split by time, early stopping on validation NDCG@10, best weights kept.
result = train("sasrec", "ml-100k", out, epochs=epochs, seed=0, resume=False, progress=False)
print(f"{result.epochs_run} epochs; test HR@10 {result.test['hr@10']:.4f}, NDCG@10 {result.test['ndcg@10']:.4f}")

# 2. Load the trained folder (Hugging Face Hub layout: config.json, model.safetensors, README.md).
model = zoo.create(f"local-dir:{out}")
titles = load_dataset("ml-100k").item_features.text

# 3. Recommend for a few histories given as raw MovieLens ids, oldest first.
histories = {
    "Star Wars, Empire Strikes Back, Return of the Jedi": ["50", "172", "181"],
    "Toy Story, Aladdin, Lion King": ["1", "95", "71"],
}
for label, raw_history in histories.items():
    history = model.encode_items(raw_history).tolist()
    top = model.recommend([history], k=5, exclude_seen=True)
    print(f"\nafter {label}:")
    for index, raw_id in zip(top.items[0].tolist(), model.decode_items(top.items[0])):
        print(f"  {raw_id:>5}  {titles[index]}")

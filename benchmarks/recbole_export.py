"""Export a trained RecBole SASRec: weights, vocabularies and RecBole's own per-user ranks (RecBole's venv).

Runs in ``benchmarks/.recbole-venv`` (it imports only RecBole, never the zoo); ``recbole_weights.py``
calls it. It rebuilds ml-100k and the split with the benchmark's configuration
(``recbole_sasrec.settings``), loads the checkpoint RecBole saved (a pickle, read here in RecBole's
own environment and never by the zoo), and ranks every validation and test user's target with
RecBole's ``full_sort_predict`` (padding column excluded, as RecBole's evaluation does; ties
pessimistic, as the zoo counts them). Writes one ``.npz`` of plain arrays (no pickled objects):
``weight/<name>`` per state-dict entry, ``item_tokens`` / ``user_tokens`` (raw ids in RecBole's
index order), and ``<split>_users`` / ``<split>_ranks`` for ``valid`` and ``test``.

Usage: python recbole_export.py CHECKPOINT.pth OUT.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recbole_sasrec import settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()

    import numpy as np
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec

    config = Config(model="SASRec", dataset="ml-100k", config_dict=settings(args.checkpoint.parent, 0, {}))
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = SASRec(config, train_data.dataset)
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=False)["state_dict"])
    model.eval()
    arrays = {f"weight/{name}": value.numpy() for name, value in model.state_dict().items()}
    arrays["item_tokens"] = np.array(dataset.field2id_token["item_id"], dtype=str)
    arrays["user_tokens"] = np.array(dataset.field2id_token["user_id"], dtype=str)
    for name, data in (("valid", valid_data), ("test", test_data)):
        users, ranks = [], []
        with torch.no_grad():
            for interaction, _, _, _ in data:
                scores = model.full_sort_predict(interaction)
                scores[:, 0] = -torch.inf
                target = scores.gather(1, interaction["item_id"][:, None])
                ranks.append((scores >= target).sum(1).numpy())  # 1 + items scored at least as high
                users.append(interaction["user_id"].numpy())
        arrays[f"{name}_users"], arrays[f"{name}_ranks"] = np.concatenate(users), np.concatenate(ranks)
    np.savez(args.out, **arrays)


if __name__ == "__main__":
    main()

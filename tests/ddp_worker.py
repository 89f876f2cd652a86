"""Run by tests/test_distributed.py under torchrun: train, then save this rank's weights."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import main  # noqa: E402

if __name__ == "__main__":
    dump = sys.argv[1]
    argv = sys.argv[2:]
    config = main.TrainConfig(**vars(main.build_parser().parse_args(argv)))
    run = main.train(config, argv)
    torch.save(run.model.state_dict(), os.path.join(dump, f"rank{run.dist.rank}.pt"))

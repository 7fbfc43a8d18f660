"""Embedded default: scikit-learn's digits (1,797 real 8x8 digits) resized to 16x16, offline.

  python -m launch.attack --config=configs/digits.py --workdir=/tmp/digits
  python -m launch.attack --config=configs/digits.py:tiny --workdir=/tmp/tiny   # seconds, for tests
  python -m launch.paper --experiment=table5 --config=configs/digits.py --seeds=0 --workdir=runs/table5
"""

from configs import common


def get_config(arg: str = ''):
  c = common.base_config()
  c.dataset = 'digits'
  c.image_size = 16
  c.channels = 1
  # 16x16: two conv blocks on the classifier side, three transposed blocks (4 -> 8 -> 16).
  c.classifier.channels = (32, 64)
  c.classifier.epochs = 30
  c.classifier.batch_size = 64
  c.eval_classifier.channels = (16, 32)
  c.eval_classifier.epochs = 30
  c.eval_classifier.batch_size = 64
  c.decoder.width = 32
  c.decoder.blocks = 3
  c.decoder.epochs = 100
  c.decoder.batch_size = 64
  c.decoder.learning_rate = 1e-3
  # The diffusion attacker sized for 2 CPU cores (one model trains and samples 3 guidances for the
  # ~720 private vectors in ~3-4 min): 100 steps instead of 400, with betas 4x larger (4e-4..0.08),
  # so the total noise sum(beta) ~ 4 and abar_T ~ 0.018 are the reference's; 16 features instead
  # of 128 (96k parameters, 16x16 grey images); 100 epochs of ~11 batches of 64, lr 1e-3.
  c.diffusion.timesteps = 100
  c.diffusion.beta_start = 4e-4
  c.diffusion.beta_end = 0.08
  c.diffusion.features = 16
  c.diffusion.epochs = 100
  c.diffusion.batch_size = 64
  c.diffusion.learning_rate = 1e-3
  return common.variant(c, arg)

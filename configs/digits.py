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
  # The diffusion attacker sized for 2 CPU cores (`common.cpu_diffusion`; one model trains and
  # samples 3 guidances for the ~720 private vectors in ~3-4 min; 96k parameters on 16x16 grey
  # images): 100 epochs of ~11 batches.
  common.cpu_diffusion(c, epochs=100)
  return common.variant(c, arg)

"""MNIST at paper scale: 28x28 digits padded to 32x32, classes 0-4 private, 5-9 attack.

Needs MNIST prepared as array_record in the TFDS data_dir (see README "Preparing data").
  python -m launch.attack --config=configs/mnist.py --workdir=runs/mnist
  python -m launch.attack --config=configs/mnist.py --config.data_dir=/data/tfds
"""

from configs import common


def get_config(arg: str = ''):
  c = common.base_config()
  c.dataset = 'mnist'
  c.image_size = 32
  c.channels = 1
  c.classifier.channels = (128, 256, 512)   # 3 conv blocks at 32x32
  c.classifier.epochs = 100
  c.eval_classifier.epochs = 100
  c.decoder.width = 64                       # 4 blocks: 256-128-64-1, 32x32
  c.decoder.blocks = 4
  c.decoder.epochs = 100
  return common.variant(c, arg)

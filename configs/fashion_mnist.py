"""Fashion-MNIST at paper scale: the MNIST config (32x32 grey, classes 0-4 private, 5-9 attack,
3 conv blocks, 4 decoder blocks) on 28x28 clothes padded to 32x32.

Needs Fashion-MNIST prepared as array_record in the TFDS data_dir (see README "Preparing data").
  python -m launch.attack --config=configs/fashion_mnist.py --workdir=runs/fashion_mnist
  python -m launch.attack --config=configs/fashion_mnist.py --config.data_dir=/data/tfds
"""

from configs import mnist


def get_config(arg: str = ''):
  c = mnist.get_config(arg)
  c.dataset = 'fashion_mnist'
  return c

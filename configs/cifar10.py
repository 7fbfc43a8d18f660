"""CIFAR-10 at paper scale: 32x32 RGB, classes 0-4 private, 5-9 attack (MID uses beta 0.001 here).

Needs CIFAR-10 prepared as array_record in the TFDS data_dir (see README "Preparing data").
  python -m launch.attack --config=configs/cifar10.py --workdir=runs/cifar10
"""

from configs import common


def get_config(arg: str = ''):
  c = common.base_config()
  c.dataset = 'cifar10'
  c.image_size = 32
  c.channels = 3
  c.classifier.channels = (128, 256, 512)
  c.classifier.epochs = 100
  c.eval_classifier.epochs = 100
  c.decoder.width = 64                       # 4 blocks: 256-128-64-3, 32x32
  c.decoder.blocks = 4
  c.decoder.epochs = 100
  c.mid.beta = 0.001                         # the paper's MID-0.001 row for CIFAR-10
  c.bido.coco_lambda_x, c.bido.coco_lambda_y = 0.1, 5.0   # BiDO's published CIFAR-10 weights
  c.bido.hsic_lambda_x, c.bido.hsic_lambda_y = 0.1, 1.0
  return common.variant(c, arg)

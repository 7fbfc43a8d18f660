"""FaceScrub at paper scale: 64x64 grey faces, 100 identities private, 100 others attack.

FaceScrub cannot be downloaded by TFDS: put the face images in `<manual_dir>/<Identity_Name>/*.jpg`
(see README "Preparing data"); identities are sorted by name, the first 100 private, the next 100 attack.
  python -m launch.attack --config=configs/facescrub.py --config.manual_dir=/data/facescrub
  python -m launch.lpa --config=configs/facescrub.py --workdir=runs/facescrub
"""

from configs import common


def get_config(arg: str = ''):
  c = common.base_config()
  c.dataset = 'facescrub'
  c.image_size = 64
  c.channels = 1
  c.classifier.channels = (128, 256, 512, 1024)   # 4 conv blocks at 64x64
  c.classifier.epochs = 100
  c.eval_classifier.channels = (64, 128, 256, 512)
  c.eval_classifier.epochs = 100
  c.decoder.width = 128                            # 5 blocks: 1024-512-256-128-1, 64x64
  c.decoder.blocks = 5
  c.decoder.epochs = 100
  return common.variant(c, arg)

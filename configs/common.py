"""Fields shared by every dataset config; each dataset file overrides what differs.

Field meanings (all overridable from the command line, e.g. `--config.seed=1`):
  dataset        name known to `mip_jax.data` (digits, mnist, fashion_mnist, cifar10, facescrub)
  data_dir       TFDS data_dir; None means the TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  manual_dir     folder of raw files for builders that need them (FaceScrub); None = <data_dir>/downloads/manual/facescrub
  image_size     side of the square images the models see (data is resized/padded to it)
  channels       1 (grey) or 3 (RGB)
  seed           one seed from which every stage derives its own
  test_fraction  fraction of each class part held out as its test split (datasets without a test split)
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = 'digits'
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.manual_dir = ml_collections.config_dict.placeholder(str)
  c.image_size = 16
  c.channels = 1
  c.seed = 0
  c.test_fraction = 0.2
  # Private classes: the classifier's task. Attack classes: the attacker's auxiliary data.
  c.private_classes = list(range(5))
  c.attack_classes = list(range(5, 10))
  c.max_per_split = ml_collections.config_dict.placeholder(int)  # cap examples per split (tiny runs)

  # Target classifier T (design section 4).
  c.classifier = ml_collections.ConfigDict()
  c.classifier.channels = (128, 256, 512)
  c.classifier.hidden_mult = 5          # Dense(hidden_mult * m) before the last layer
  c.classifier.dropout = 0.5
  c.classifier.epochs = 20
  c.classifier.batch_size = 128
  c.classifier.learning_rate = 1e-3

  # Evaluation classifier E: judges reconstructions; another seed and narrower convs.
  c.eval_classifier = ml_collections.ConfigDict()
  c.eval_classifier.channels = (64, 128, 256)
  c.eval_classifier.hidden_mult = 5
  c.eval_classifier.dropout = 0.5
  c.eval_classifier.epochs = 20
  c.eval_classifier.batch_size = 128
  c.eval_classifier.learning_rate = 1e-3

  # Inversion decoder (attacker's I_att; the substitute I_sub uses the same shape by default).
  c.decoder = ml_collections.ConfigDict()
  c.decoder.width = 64                  # ngf: channels of the last hidden block
  c.decoder.blocks = 4                  # transposed-conv blocks; output side = 4 * 2**(blocks - 1)
  c.decoder.epochs = 50
  c.decoder.batch_size = 128
  c.decoder.learning_rate = 2e-4
  c.decoder.b1 = 0.5
  c.decoder.b2 = 0.999
  c.decoder.loss = 'mse'                # 'mse' or 'psnr' (Table II)

  # What the attacker feeds its decoder (Yang et al.): 'log' (log-probs, top-k truncated) or 'prob'.
  c.attack = ml_collections.ConfigDict()
  c.attack.transform = 'log'
  c.attack.top_k = ml_collections.config_dict.placeholder(int)  # None = keep all m entries
  c.attack.log_floor = -1000.0
  c.attack.reconstruct_from = 'clean'   # 'clean' (Definition 2) or 'defended' vectors of private data
  c.attack.adaptive = 'none'            # Table X: 'none', 'noise' or 'softmax' on received vectors
  c.attack.adaptive_noise_std = 1e-3    # std of the 'noise' adaptive attacker

  # LPA crafting (Algorithm 1; Witches' Brew optimiser).
  c.lpa = ml_collections.ConfigDict()
  c.lpa.eps = 0.01                      # L2 radius of each perturbation (Table VI sweeps it)
  c.lpa.steps = 240                     # R optimisation rounds
  c.lpa.tau = 0.1                       # step size = tau * eps (signed Adam)
  c.lpa.milestones = (0.375, 0.625, 0.875)  # fractions of R where the step size drops 10x
  c.lpa.restarts = 1                    # random restarts; the lowest alignment loss wins
  c.lpa.mode = 'aggregate'              # 'aggregate' (paper) or 'per_example'
  c.lpa.batch_size = 128                # queries crafted together (split over devices)
  c.lpa.distance = 'cosine'             # 'cosine' (LPA) or 'mse' (the Poi_MSE ablation)
  c.lpa.loss = 'mse'                    # defender's reconstruction loss R (Table II: 'mse'/'psnr')

  # Metrics.
  c.eval = ml_collections.ConfigDict()
  c.eval.eps_grid = [0.005 * i for i in range(21)]  # epsilon values of the epsilon-eta curve
  c.eval.num_figure_images = 10
  return c


def make_tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks any config to a seconds-long run with the same image size (tests, smoke runs)."""
  c.max_per_split = 64
  c.classifier.channels = (8,) * len(c.classifier.channels)
  c.classifier.epochs = 2
  c.classifier.batch_size = 32
  c.eval_classifier.channels = (8,) * len(c.eval_classifier.channels)
  c.eval_classifier.epochs = 2
  c.eval_classifier.batch_size = 32
  c.decoder.width = 8
  c.decoder.epochs = 2
  c.decoder.batch_size = 32
  c.lpa.steps = 4
  c.lpa.batch_size = 32
  return c


def variant(c: ml_collections.ConfigDict, arg: str) -> ml_collections.ConfigDict:
  """Applies the `:arg` variant of a config file: '' (paper scale) or 'tiny'."""
  if arg == 'tiny':
    return make_tiny(c)
  if arg:
    raise ValueError(f'unknown config variant {arg!r}; known: "" (default), "tiny"')
  return c

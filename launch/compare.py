"""Several defenses side by side against the same cached classifier, evaluator and substitute.

  python -m launch.compare --config=configs/digits.py --workdir=runs/digits             # all defenses
  python -m launch.compare --config=configs/digits.py --defenses=none,lpa --attackers=none,noise,softmax
  python -m launch.compare --config=configs/digits.py --defenses=none,lpa,random --attackers=diffusion,diffusion_floor@2
One results.json / results.md (the paper's Table I layout, Table X rows for adaptive attackers) and one
figure with a row of reconstructions per defense.
"""

from absl import app, flags

from launch import common
from mip_jax import defenses
from mip_jax.attacks import suite

flags.mark_flags_as_required(['config'])
DEFENSES = flags.DEFINE_list('defenses', None, 'Defenses to compare (default: all): '
                             + ','.join(defenses.REGISTRY))
ATTACKERS = flags.DEFINE_list('attackers', ['none'], "Attackers of the suite (mip_jax/attacks/suite.py): "
                              "the paper's 'none', " + ', '.join(suite.BASES) + " (topk@k, temp@T, "
                              "diffusion@w take a parameter; any of them with ':defended' inverts the "
                              "defended private vectors)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  common.run_protocol(DEFENSES.value or list(defenses.REGISTRY), ATTACKERS.value)


if __name__ == '__main__':
  app.run(main)

"""Named points where a run can be killed on purpose, to prove it resumes from any of them.

  MIP_JAX_KILL_AT=classifier:epoch:2 python -m launch.compare ...   # SIGKILLs itself there

A test sets the variable, lets the process die at that point (no cleanup, no atexit, like a power cut
or an OOM kill) and reruns the same command. Points:
  <stage>:epoch:<n>   a training stage is about to start epoch n (1-based; epochs before it saved)
  <stage>:save:<n>    the checkpoint of epoch n is being written (Orbax's asynchronous save begun)
  craft:batch:<k>     LPA/LFP crafting is about to craft batch k (0-based) of a call
  lpa:write           LPA's crafted vectors are in the temporary file, not yet renamed into place
Unset (the normal case) it costs one environment lookup per point.

"""

import fnmatch
import os
import signal

ENV = 'MIP_JAX_KILL_AT'


def reached(point: str) -> None:
  """Kills this process with SIGKILL when `point` matches $MIP_JAX_KILL_AT (a shell-style pattern:
  `substitute*:save:1` matches whatever hash names the substitute stage)."""
  wanted = os.environ.get(ENV)
  if wanted and fnmatch.fnmatchcase(point, wanted):
    os.kill(os.getpid(), signal.SIGKILL)

"""asdflow: anomalous sound detection for machine condition monitoring with normalizing flows.

The package follows the pipeline of the DCASE 2024 Task 2 report by
García-de-la-Puente et al.: DCASE clips (:mod:`asdflow.data`) become a
158-row feature image (:mod:`asdflow.features`), a frozen CNN pyramid
(:mod:`asdflow.encoder`) turns it into feature maps, and conditional
normalizing flows (:mod:`asdflow.flows`, :mod:`asdflow.cflow`) score how
unlikely each position is. :mod:`asdflow.evaluation` computes the official
DCASE metrics, :mod:`asdflow.baseline` is the DCASE autoencoder, and
:mod:`asdflow.synth` generates a toy factory in the DCASE layout.

Nothing heavy happens at import time: import the submodule you need.
"""

import warnings

from asdflow.errors import AsdflowError

# Text progress bars serve where Jupyter has no widgets (the website build). tqdm.auto advises
# installing them when it is first imported, which the submodules do: silence it before them.
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"

__all__ = ["AsdflowError", "__version__"]

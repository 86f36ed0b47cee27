"""A second latent format, as a user would write one in their own package (tests/test_latent_format.py)."""

from ra3_lightning.estep import LatentFormat


class SemicolonComment(LatentFormat):
    """Rationales as ``; `` comment lines (Lisp, assembly): the tiny tokenizer has tokens that begin with ``;``."""

    comment_prefix = "; "

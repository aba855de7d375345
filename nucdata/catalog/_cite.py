"""What to cite: BibTeX for each dataset and for the merging method.

>>> import nucdata
>>> print(nucdata.cite("tnbc"))            # doctest: +SKIP
@article{naylor2019segmentation, ...
>>> print(nucdata.cite())                  # every dataset and the method  # doctest: +SKIP

The datasets' entries come from their cards (``nucdata info NAME`` shows the same text);
the method's entry is :data:`METHOD_BIBTEX`. See ``docs/citing.md``.
"""

from __future__ import annotations

import os
import re

from nucdata.catalog._registry import get_card, list_datasets
from nucdata.errors import UnknownDatasetError

#: The name under which :func:`cite` returns the method's entry.
METHOD = "method"

#: Zhang et al., the correlation-based cross-training method that ``nucdata build-merged``
#: implements. Title, authors, journal and year are confirmed by the authors' project page;
#: the volume, article number and DOI are not, so they are left out of the entry and given
#: in :data:`METHOD_UNVERIFIED` instead.
METHOD_BIBTEX = """@article{zhang2023merging,
  author  = {Zhang, Wenhua and Zhang, Jun and Yang, Sen and Wang, Xiyue and Yang, Wei and Huang, Junzhou and Wang, Wenping and Han, Xiao},
  title   = {Merging nucleus datasets by correlation-based cross-training},
  journal = {Medical Image Analysis},
  year    = {2023},
  url     = {https://w-h-zhang.github.io/projects/dataset_merging/dataset_merging.html}
}"""

#: Bibliographic details of the method's paper that nucdata has not verified against the
#: publisher; check them before adding them to :data:`METHOD_BIBTEX`.
METHOD_UNVERIFIED = "volume 84, article 102705, doi 10.1016/j.media.2022.102705"

_ENTRY_START = re.compile(r"^@\w+\s*\{\s*([^,\s]+)\s*,", re.MULTILINE)


def split_entries(bibtex: str) -> list[tuple[str, str]]:
    """Split BibTeX text into ``(key, entry)`` pairs, in order.

    Parameters
    ----------
    bibtex
        One or more entries, each starting with ``@type{key,`` at the start of a line.

    Returns
    -------
    list of (str, str)
        The citation key and the entry's text (stripped).
    """
    starts = list(_ENTRY_START.finditer(bibtex))
    entries = []
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(bibtex)
        entries.append((match.group(1), bibtex[match.start():end].strip()))
    return entries


def cite(*names: str, root: str | os.PathLike[str] | None = None) -> str:
    """BibTeX for datasets and for the merging method, each entry once.

    Parameters
    ----------
    *names
        Dataset names (``nucdata.list_datasets()``) and/or ``"method"`` for the
        correlation-based cross-training paper (Zhang et al., Medical Image Analysis
        2023). With no name: every dataset and the method, which is what a merged
        dataset made by ``nucdata build-merged`` with its defaults uses.
    root
        Data home whose local card overrides apply; ``$NUCDATA_HOME`` by default.

    Returns
    -------
    str
        The entries separated by blank lines. An entry shared by two datasets (Kumar
        and MoNuSeg both cite Kumar et al. 2017) appears once. The method's entry is
        preceded by a BibTeX comment naming the details that are not verified.

    Raises
    ------
    UnknownDatasetError
        For a name that is neither a dataset nor ``"method"``; lists the valid names.
    """
    wanted = list(names) or [*list_datasets(), METHOD]
    seen: set[str] = set()
    out: list[str] = []
    for name in wanted:
        key = name.strip().lower()
        if key == METHOD:
            text = METHOD_BIBTEX
        elif key in list_datasets():
            text = get_card(key, root).citation
        else:
            raise UnknownDatasetError(name, [*list_datasets(), METHOD])
        for cite_key, entry in split_entries(text):
            if cite_key in seen:
                continue
            seen.add(cite_key)
            if cite_key == "zhang2023merging":
                entry = f"% Not verified, check before adding: {METHOD_UNVERIFIED}\n{entry}"
            out.append(entry)
    return "\n\n".join(out) + "\n"

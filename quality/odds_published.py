"""PyOD's published ODDS benchmark: mean test ROC-AUC of 10 random 60/40 splits, per table and detector.

Source: PyOD's benchmark page (https://pyod.readthedocs.io/en/latest/benchmark.html, "ROC
Performances (average of 10 independent trials)"), whose table is the file docs/tables/roc.csv of
https://github.com/yzhao062/pyod at commit a1d492c25c2980d874080ee7cb6ad5d646a6bef4 (2019-03-13,
"Update benchmark"; unchanged on master since). The figures are copied as published, all 17
tables and all 10 detectors, so a table's best figure is the best of every published detector,
not of the ones this project also runs.
"""

from __future__ import annotations

import csv
import io

SOURCE = "PyOD benchmark (pyod.readthedocs.io/en/latest/benchmark.html; yzhao062/pyod docs/tables/roc.csv @ a1d492c)"

_ROC_CSV = """\
Data,#Samples,# Dimensions,Outlier Perc,ABOD,CBLOF,FB,HBOS,IForest,KNN,LOF,MCD,OCSVM,PCA
arrhythmia,452,274,14.6018,0.7688,0.7835,0.7781,0.8219,0.8005,0.7861,0.7787,0.7790,0.7812,0.7815
cardio,1831,21,9.6122,0.5692,0.9276,0.5867,0.8351,0.9213,0.7236,0.5736,0.8135,0.9348,0.9504
glass,214,9,4.2056,0.7951,0.8504,0.8726,0.7389,0.7569,0.8508,0.8644,0.7901,0.6324,0.6747
ionosphere,351,33,35.8974,0.9248,0.8134,0.8730,0.5614,0.8499,0.9267,0.8753,0.9557,0.8419,0.7962
letter,1600,32,6.2500,0.8783,0.5070,0.8660,0.5927,0.6420,0.8766,0.8594,0.8074,0.6118,0.5283
lympho,148,18,4.0541,0.9110,0.9728,0.9753,0.9957,0.9941,0.9745,0.9771,0.9000,0.9759,0.9847
mnist,7603,100,9.2069,0.7815,0.8009,0.7205,0.5742,0.8159,0.8481,0.7161,0.8666,0.8529,0.8527
musk,3062,166,3.1679,0.1844,0.9879,0.5263,1.0000,0.9999,0.7986,0.5287,0.9998,1.0000,1.0000
optdigits,5216,64,2.8758,0.4667,0.5089,0.4434,0.8732,0.7253,0.3708,0.4500,0.3979,0.4997,0.5086
pendigits,6870,16,2.2707,0.6878,0.9486,0.4595,0.9238,0.9435,0.7486,0.4698,0.8344,0.9303,0.9352
pima,768,8,34.8958,0.6794,0.7348,0.6235,0.7000,0.6806,0.7078,0.6271,0.6753,0.6215,0.6481
satellite,6435,36,31.6395,0.5714,0.6693,0.5572,0.7581,0.7022,0.6836,0.5573,0.8030,0.6622,0.5988
satimage-2,5803,36,1.2235,0.8190,0.9917,0.4570,0.9804,0.9947,0.9536,0.4577,0.9959,0.9978,0.9822
shuttle,49097,9,7.1511,0.6234,0.6272,0.4724,0.9855,0.9971,0.6537,0.5264,0.9903,0.9917,0.9898
vertebral,240,6,12.5000,0.4262,0.3486,0.4166,0.3263,0.3905,0.3817,0.4081,0.3906,0.4431,0.4027
vowels,1456,12,3.4341,0.9606,0.5856,0.9425,0.6727,0.7585,0.9680,0.9410,0.8076,0.7802,0.6027
wbc,378,30,5.5556,0.9047,0.9227,0.9325,0.9516,0.9310,0.9366,0.9349,0.9210,0.9319,0.9159
"""

_TABLE_COLUMNS = ("Data", "#Samples", "# Dimensions", "Outlier Perc")


def _parse() -> dict[str, dict[str, float]]:
    table = {}
    for row in csv.DictReader(io.StringIO(_ROC_CSV)):
        table[row["Data"]] = {name: float(value) for name, value in row.items() if name not in _TABLE_COLUMNS}
    return table


# table -> {PyOD detector name -> mean ROC-AUC}
ROC_AUC: dict[str, dict[str, float]] = _parse()
DETECTORS: tuple[str, ...] = tuple(next(iter(ROC_AUC.values())))
# This project's detector names for PyOD's, where they are the same algorithm.
SAME_DETECTOR = {"iforest": "IForest", "hbos": "HBOS", "knn": "KNN", "lof": "LOF"}


def best(table: str) -> tuple[str, float] | None:
    """The best published detector of a table and its ROC-AUC, or None for an unknown table."""
    figures = ROC_AUC.get(table)
    if not figures:
        return None
    name = max(figures, key=figures.get)
    return name, figures[name]


def mean(table: str) -> float | None:
    """The mean of every published detector's ROC-AUC on a table (the field's average method)."""
    figures = ROC_AUC.get(table)
    return sum(figures.values()) / len(figures) if figures else None

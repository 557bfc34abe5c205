"""scikit-learn's digits, 10 image(s) per class, learned labels and l2reg."""

from configs import common
from configs import default


def get_config():
  return common.learned_setting(default.get_config(), 10)

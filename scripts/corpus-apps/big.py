"""big: numpy/scipy/pandas/scikit-learn smoke test, the top layer of the big corpus image."""
import numpy as np
import pandas as pd
import scipy
import sklearn
from scipy import linalg
from sklearn.linear_model import LinearRegression

x = np.arange(10.0).reshape(-1, 1)
model = LinearRegression().fit(x, 3 * x.ravel() + 1)
df = pd.DataFrame({"x": x.ravel()})
print(f"big: numpy {np.__version__}, scipy {scipy.__version__}, pandas {pd.__version__}, sklearn {sklearn.__version__}")
print(f"big: slope {model.coef_[0]:.3f}, det {linalg.det(np.eye(3) * 2):.1f}, sum {df.x.sum():.0f}")
print("big: ok")

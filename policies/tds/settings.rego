# The operator's settings of the city policy library. Each is off by default, so a data
# space that does not opt in decides exactly as before; an operator changes them in its own
# copy of the library (policy.policy_dir).
package tds.settings

import rego.v1

# Important data (重要数据) may leave only as answers computed where it lives (可用不可见):
# every copy of an important product is refused (`important_data_requires_compute`).
important_requires_compute := false

//! The parameters as the ROS parameter services see them (`ros2 param list/get/set/describe/
//! dump`): every parameter with its current value and description. A `set` is validated like a
//! startup value and refused with the reason when invalid or read-only; accepted changes reach
//! the worker through r2r's parameter event stream (see `main.rs`).

use r2r::indexmap::IndexMap;
use r2r::{Parameter, ParameterValue, RosParams};

use crate::convert::{param_value, value_of};
use crate::params::{cameras, NodeParams, DESCRIPTIONS};

pub struct LiveParams {
    pub current: NodeParams,
}

fn description(name: &str) -> &'static str {
    DESCRIPTIONS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, d, _)| *d)
        .or_else(|| cameras::description(name))
        .unwrap_or("")
}

impl RosParams for LiveParams {
    fn register_parameters(
        &mut self,
        _prefix: &str,
        _param: Option<Parameter>,
        params: &mut IndexMap<String, Parameter>,
    ) -> r2r::Result<()> {
        // The startup values were validated already: publish them all, defaults included.
        for (name, value) in self.current.to_map() {
            params.shift_remove(&name);
            let description = description(&name);
            params.insert(
                name,
                Parameter {
                    value: param_value(&value),
                    description,
                },
            );
        }
        Ok(())
    }

    fn get_parameter(&mut self, name: &str) -> r2r::Result<ParameterValue> {
        self.current
            .to_map()
            .get(name)
            .map(param_value)
            .ok_or_else(|| r2r::Error::InvalidParameterName {
                name: name.to_string(),
            })
    }

    fn set_parameter(&mut self, name: &str, value: &ParameterValue) -> r2r::Result<()> {
        self.current = self.checked(name, value)?;
        Ok(())
    }

    fn check_parameter(&self, name: &str, value: &ParameterValue) -> r2r::Result<()> {
        self.checked(name, value).map(|_| ())
    }
}

impl LiveParams {
    fn checked(&self, name: &str, value: &ParameterValue) -> r2r::Result<NodeParams> {
        self.current
            .with_change(name, value_of(value))
            .map_err(|msg| r2r::Error::ParameterValueConv {
                name: name.to_string(),
                msg,
            })
    }
}

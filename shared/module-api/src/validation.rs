//! Turning `validator` reports into the project's field errors: every field at fault, by
//! its path (`items[0].quantity`), with its own code and message.

use kernel::FieldErrors;
use validator::{ValidationError, ValidationErrors, ValidationErrorsKind};

/// Flattens a nested `validator` report into `path -> error`, with paths such as
/// `items[0].quantity`.
pub fn flatten_validation_errors(errors: &ValidationErrors) -> FieldErrors {
    let mut out = FieldErrors::new();
    flatten_into("", errors, &mut out);
    out
}

fn flatten_into(prefix: &str, errors: &ValidationErrors, out: &mut FieldErrors) {
    for (field, kind) in errors.errors() {
        let path = join(prefix, field);
        match kind {
            ValidationErrorsKind::Field(list) => {
                if let Some(first) = list.first() {
                    out.add(path, first.code.clone(), describe(first));
                }
            }
            ValidationErrorsKind::Struct(inner) => flatten_into(&path, inner, out),
            ValidationErrorsKind::List(items) => {
                for (index, inner) in items {
                    flatten_into(&format!("{path}[{index}]"), inner, out);
                }
            }
        }
    }
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

/// A sentence for one failed check, from its message or its code and parameters.
fn describe(error: &ValidationError) -> String {
    if let Some(message) = &error.message {
        return message.to_string();
    }
    let param = |name: &str| error.params.get(name).map(|v| v.to_string());
    match error.code.as_ref() {
        "range" => match (param("min"), param("max")) {
            (Some(min), Some(max)) => format!("must be between {min} and {max}"),
            (Some(min), None) => format!("must be at least {min}"),
            (None, Some(max)) => format!("must be at most {max}"),
            (None, None) => "is out of range".into(),
        },
        "length" => match (param("min"), param("max"), param("equal")) {
            (_, _, Some(equal)) => format!("must be exactly {equal} characters long"),
            (Some(min), Some(max), _) if min == "1" => {
                format!("must not be empty and be at most {max} characters")
            }
            (Some(min), Some(max), _) => format!("must be {min} to {max} characters long"),
            (Some(min), None, _) if min == "1" => "must not be empty".into(),
            (Some(min), None, _) => format!("must be at least {min} characters long"),
            (None, Some(max), _) => format!("must be at most {max} characters long"),
            _ => "has the wrong length".into(),
        },
        "email" => "must be an email address".into(),
        "required" => "is required".into(),
        other => format!("is invalid ({other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use validator::Validate;

    #[derive(Validate)]
    struct Line {
        #[validate(range(min = 1, max = 5))]
        quantity: i64,
    }

    #[derive(Validate)]
    struct Order {
        #[validate(length(min = 1, max = 3))]
        name: String,
        #[validate(nested)]
        lines: Vec<Line>,
    }

    #[test]
    fn nested_errors_get_dotted_and_indexed_paths() {
        let order = Order {
            name: String::new(),
            lines: vec![Line { quantity: 1 }, Line { quantity: 9 }],
        };
        let errors = flatten_validation_errors(&order.validate().expect_err("invalid"));
        let paths: Vec<_> = errors.iter().map(|(p, _)| p.to_owned()).collect();
        assert_eq!(paths, ["lines[1].quantity", "name"]);
        let messages: Vec<_> = errors.iter().map(|(_, e)| e.message.clone()).collect();
        assert_eq!(
            messages,
            [
                "must be between 1 and 5",
                "must not be empty and be at most 3 characters"
            ]
        );
    }
}

//! SNS gateway: publishes a pipeline event with its `event_type` message attribute.

use crate::error::AwsError;
use aws_sdk_sns::Client;
use aws_sdk_sns::types::MessageAttributeValue;

/// Publish to `topic_arn`, with the `event_type` attribute that subscription filter policies
/// select on; returns the message id.
pub async fn publish(
    sns: &Client,
    topic_arn: &str,
    event_type: &str,
    subject: &str,
    message: &str,
) -> Result<String, AwsError> {
    let attr = MessageAttributeValue::builder()
        .data_type("String")
        .string_value(event_type)
        .build()
        .map_err(|e| AwsError {
            region: sns.config().region().map(ToString::to_string),
            operation: "sns:Publish",
            resource: topic_arn.to_owned(),
            kind: crate::error::ErrorKind::InvalidInput,
            code: None,
            message: e.to_string(),
        })?;
    let out = sns
        .publish()
        .topic_arn(topic_arn)
        .subject(subject)
        .message(message)
        .message_attributes("event_type", attr)
        .send()
        .await
        .map_err(|e| {
            AwsError::from_sdk("sns:Publish", topic_arn, e).in_region(sns.config().region())
        })?;
    Ok(out.message_id().unwrap_or_default().to_owned())
}

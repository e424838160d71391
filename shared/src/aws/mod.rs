//! Gateways: one function per AWS call, SDK types converted to [`crate::model`] types at the
//! edge and SDK errors classified once into [`crate::error::AwsError`].

pub mod clients;
pub mod ebs;
pub mod ec2;
pub mod rfc2047;
pub mod s3;
pub mod sns;

output "cluster_name" {
  description = "EKS cluster name: aws eks update-kubeconfig --name <this> --region <region>."
  value       = module.eks.cluster_name
}

output "cluster_endpoint" {
  description = "Kubernetes API endpoint."
  value       = module.eks.cluster_endpoint
}

output "bucket_name" {
  description = "S3 bucket for checkpoints, models and MLflow artifacts (k8s/overlays/prod: mlflow-settings)."
  value       = aws_s3_bucket.artifacts.bucket
}

output "ecr_repository_url" {
  description = "Push the images here (k8s/overlays/prod: images)."
  value       = aws_ecr_repository.safelatent.repository_url
}

output "ray_role_arn" {
  description = "IAM role of the safelatent-ray service account (k8s/overlays/prod/serviceaccounts.yaml)."
  value       = module.ray_irsa.iam_role_arn
}

output "mlflow_role_arn" {
  description = "IAM role of the safelatent-mlflow service account."
  value       = module.mlflow_irsa.iam_role_arn
}

output "efs_file_system_id" {
  description = "EFS file system behind the `efs` StorageClass (the shared runs/ volume)."
  value       = aws_efs_file_system.runs.id
}

variable "name" {
  description = "Prefix of every resource (cluster, bucket, roles)."
  type        = string
  default     = "safelatent-prod"
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "us-west-2"
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.33"
}

variable "namespace" {
  description = "Namespace of the safelatent manifests (k8s/base/kustomization.yaml)."
  type        = string
  default     = "safelatent"
}

variable "vpc_cidr" {
  description = "CIDR of the VPC the cluster gets."
  type        = string
  default     = "10.42.0.0/16"
}

variable "cpu_instance_types" {
  description = "Instance types of the CPU node group (Ray heads, CPU workers, MLflow)."
  type        = list(string)
  default     = ["m7i.2xlarge"]
}

variable "cpu_nodes" {
  description = "Size bounds of the CPU node group."
  type        = object({ min = number, max = number, desired = number })
  default     = { min = 2, max = 10, desired = 3 }
}

variable "gpu_instance_types" {
  description = "Instance types of the GPU node group (one NVIDIA GPU each by default)."
  type        = list(string)
  default     = ["g6e.2xlarge"]
}

variable "gpu_nodes" {
  description = "Size bounds of the GPU node group; min 0 lets it scale to zero between jobs."
  type        = object({ min = number, max = number, desired = number })
  default     = { min = 0, max = 8, desired = 0 }
}

variable "bucket_name" {
  description = "S3 bucket for checkpoints, models and MLflow artifacts; default <name>-artifacts."
  type        = string
  default     = null
}

variable "kuberay_version" {
  description = "KubeRay operator Helm chart version."
  type        = string
  default     = "1.7.0"
}

variable "nvidia_device_plugin_version" {
  description = "NVIDIA device plugin Helm chart version (the AL2023 NVIDIA AMI has drivers, not the plugin)."
  type        = string
  default     = "0.17.1"
}

variable "cluster_autoscaler_version" {
  description = "Cluster Autoscaler Helm chart version (adds nodes when Ray's autoscaler adds pods)."
  type        = string
  default     = "9.46.6"
}

variable "tags" {
  description = "Tags on every AWS resource."
  type        = map(string)
  default     = { project = "safelatent" }
}

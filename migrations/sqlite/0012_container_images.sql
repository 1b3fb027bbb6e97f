-- An origin type's image names the container image its nodes run on Kubernetes
-- targets (the command and arguments stay as they are); without one, a target's
-- own image is used.
ALTER TABLE images ADD COLUMN container_image TEXT;

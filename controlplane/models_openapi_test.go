package controlplane

import (
	"testing"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// TestOpenAPIModelSchemasMatchGoTypes extends TestOpenAPISchemasMatchGoTypes
// to the model registry's wire types.
func TestOpenAPIModelSchemasMatchGoTypes(t *testing.T) {
	doc := loadOpenAPI(t, OpenAPI())
	types := map[string]any{
		"ModelTraining": cpapi.ModelTraining{}, "Model": cpapi.Model{}, "ModelDeployment": cpapi.ModelDeployment{},
		"ModelsResponse": cpapi.ModelsResponse{}, "ModelVersionsResponse": cpapi.ModelVersionsResponse{},
		"DeployModelRequest": cpapi.DeployModelRequest{}, "RollbackModelRequest": cpapi.RollbackModelRequest{},
		"RollbackModelResponse": cpapi.RollbackModelResponse{}, "ModelAssignment": cpapi.ModelAssignment{},
		"AgentModelsResponse": cpapi.AgentModelsResponse{},
	}
	checkSchemas(t, doc, types)
}
